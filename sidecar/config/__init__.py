"""Settings: one frozen, validated object built once from flags, environment, TOML file, defaults.

Precedence is flag > environment variable > config file > default (CONTRACT.md, "Settings").
Every default is in ``DEFAULTS``; every setting's flag, environment variable and TOML key is in
``OPTIONS``, which also builds the command-line flags, so the three spellings cannot drift.

Every problem raises ``ConfigError(setting, message)`` whose ``setting`` is the spelling the
user wrote (``--pem-mode``, ``CERT_SIDECAR_PEM_MODE`` or ``files.pem_mode in <file>``), so the
one-line message points at the place to fix.

One module per audience, as lego's ``cmd/internal/configuration/`` and pydantic-settings' one
file per source do it; each imports only modules above it in this list:

- ``options``: the one ``OPTIONS`` table (flag, environment variable, TOML key), ``DEFAULTS``
  and the names of the choices (key types, challenges, reload modes, log formats);
- ``model``: ``Settings`` and ``CertificateSpec``, what the rest of the sidecar imports, and
  the fingerprint of the settings a certificate's work follows. ``Settings`` holds one part per
  TOML table (``settings.acme``, ``.files``, ``.renewal``, ``.haproxy``, ``.service``), each
  field named as the table's key, so a part goes to the code that uses it;
- ``parsers``: pure value parsers: one raw value in, a typed value (or a ``ConfigError``
  naming the setting as written) out; no disk, no process state;
- ``host_lookups``: the few values only this host can check (a command in PATH, a group the
  process is in, the EAB key file);
- ``sources``: where a raw value comes from (flag > environment > file > default), the TOML
  file, and the certificate list as written;
- ``loader``: ``load_settings``, which parses every setting in a fixed order and checks them
  against each other; ``locate_running_sidecar`` for a file that does not load;
- ``render``: ``describe``, the text of ``check-config``, secrets masked;
- ``flags``: the argparse flags, made from ``OPTIONS``.

``load_settings`` reads only the config file and the EAB key file. The checks that look at the
rest of the disk (the CA bundle, the directories, HAProxy's sockets) are start-up checks in
``sidecar.preflight``, with the table of which command runs which; they import this package,
never the other way round.
"""

from sidecar.config.flags import add_setting_arguments
from sidecar.config.loader import RunningSidecarAddress, load_settings, locate_running_sidecar
from sidecar.config.model import (
    WORK_FIELDS,
    AcmeSettings,
    CertificateSpec,
    FilesSettings,
    HAProxySettings,
    RenewalSettings,
    ServiceSettings,
    Settings,
    work_fingerprint,
    work_label,
)
from sidecar.config.options import (
    CHALLENGES,
    DEFAULTS,
    ENV_PREFIX,
    KEY_TYPES,
    LOG_FORMATS,
    LOG_LEVELS,
    OPTIONS,
    RELOAD_MODES,
    Option,
    ReloadMode,
    default_reload_mode,
    is_reload_mode,
)
from sidecar.config.parsers import (
    parse_bool,
    parse_host_port,
    parse_pem_mode,
    parse_signal,
    resolve_group,
    split_command,
)
from sidecar.config.render import describe, mask_command
from sidecar.errors import ConfigError

__all__ = [
    "CHALLENGES",
    "DEFAULTS",
    "ENV_PREFIX",
    "KEY_TYPES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "OPTIONS",
    "RELOAD_MODES",
    "WORK_FIELDS",
    "AcmeSettings",
    "CertificateSpec",
    "ConfigError",
    "FilesSettings",
    "HAProxySettings",
    "Option",
    "ReloadMode",
    "RenewalSettings",
    "RunningSidecarAddress",
    "ServiceSettings",
    "Settings",
    "add_setting_arguments",
    "default_reload_mode",
    "describe",
    "is_reload_mode",
    "load_settings",
    "locate_running_sidecar",
    "mask_command",
    "parse_bool",
    "parse_host_port",
    "parse_pem_mode",
    "parse_signal",
    "resolve_group",
    "split_command",
    "work_fingerprint",
    "work_label",
]
