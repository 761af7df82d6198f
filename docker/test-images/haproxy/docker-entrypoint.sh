#!/bin/sh
# Same contract as the upstream image's entrypoint: arguments that start with "-" are options
# for haproxy, and haproxy itself runs as master-worker (-W) in the foreground (-db), so the
# runtime API and reloads behave as they do upstream.
set -e
case "$1" in
    -*) set -- haproxy "$@" ;;
esac
if [ "$1" = "haproxy" ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
