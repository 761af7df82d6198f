"""Identifier validation and certificate-name derivation (pure)."""

from __future__ import annotations

import pytest

from sidecar.domains import (
    certificate_name,
    is_wildcard,
    normalize_dns_name,
    normalize_identifier,
    validate_certificate_name,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("example.org", "example.org"),
        ("Example.ORG", "example.org"),
        ("example.org.", "example.org"),
        ("  a.b  ", "a.b"),
        ("localhost", "localhost"),
        ("3com.example", "3com.example"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("*.example.org", "*.example.org"),
        ("*.Example.org.", "*.example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        ("demo.openchami.cluster", "demo.openchami.cluster"),
    ],
)
def test_valid_names_are_normalised(given: str, expected: str) -> None:
    assert normalize_dns_name(given) == expected


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("", "empty"),
        (".", "empty"),
        ("a..b", "empty label"),
        ("example.org..", "empty label"),
        (".example.org", "empty label"),
        ("-a.example", "hyphens"),
        ("a-.example", "hyphens"),
        ("a_b.example", "letters, digits"),
        ("a b.example", "letters, digits"),
        ("a.example/x", "letters, digits"),
        ("a" * 64 + ".example", "longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("a.*.example", "leftmost"),
        ("*a.example", "leftmost"),
        ("**.example", "leftmost"),
        ("*.*.example", "leftmost"),
        ("*", "leftmost"),
        ("*.org", "below a domain"),
        ("1.2.3.999", "neither a valid IP"),
        ("10.0.0", "neither a valid IP"),
        ("xn--zz.example", "punycode"),
        ("x\ufffd.example", "internationalised"),
        ("\u05d0a.example", "internationalised"),
        ("a\u3000b.example", "letters, digits"),
    ],
)
def test_invalid_names_are_refused_with_a_reason(given: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="(?i)" + fragment.replace("*", r"\*")):
        normalize_dns_name(given)


def test_253_characters_is_the_limit() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert normalize_dns_name(name) == name
    with pytest.raises(ValueError, match="253"):
        normalize_dns_name(name + "d")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1", ("ip", "127.0.0.1")),
        ("::1", ("ip", "::1")),
        ("2001:DB8:0:0::1", ("ip", "2001:db8::1")),
        ("Host.Example", ("dns", "host.example")),
        ("*.x.example", ("dns", "*.x.example")),
    ],
)
def test_identifiers_are_classified(given: str, expected: tuple[str, str]) -> None:
    assert normalize_identifier(given) == expected


def test_a_scoped_ipv6_address_is_refused() -> None:
    with pytest.raises(ValueError, match="zone"):
        normalize_identifier("fe80::1%eth0")


@pytest.mark.parametrize(
    ("first", "name"),
    [
        ("demo.openchami.cluster", "demo.openchami.cluster"),
        ("*.example.org", "_wildcard.example.org"),
        ("127.0.0.1", "127.0.0.1"),
        ("2001:db8::1", "2001-db8--1"),
    ],
)
def test_certificate_names_are_derived_from_the_first_name(first: str, name: str) -> None:
    assert certificate_name(first) == name


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "a b", ".hidden", "a:b", "é"])
def test_unsafe_certificate_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="certificate name"):
        validate_certificate_name(bad)


def test_wildcard_detection() -> None:
    assert is_wildcard("*.a.b")
    assert not is_wildcard("a.b")
