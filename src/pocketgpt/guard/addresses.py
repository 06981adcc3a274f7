"""Where an address points: the host of a web address or an e-mail address, and a path under allowed roots.

Web addresses are read as browsers and common HTTP clients read them (the WHATWG URL standard), not as
`urllib.parse` does: tabs and newlines are dropped, a backslash ends the host of an http(s) address as a slash
does, the user info ends at the last "@" before the path, and a missing scheme means http
(`www.example.com/page`). Where the two readings of a host differ (`https://evil.com\\@example.com`: evil.com
to a client, example.com to urllib), the address is refused: a check that reads one host while the request
goes to another is the hole such an address exists for.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse

SPECIAL = {"http", "https", "ws", "wss", "ftp"}  # schemes whose addresses have a host (file: has none to allow)
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
EMAIL = re.compile(r"[^@\s/\\?#:<>\"]+@([^@\s/\\?#:<>\"]+)")
FORBIDDEN_HOST = re.compile(r"[\x00-\x20#%/:<>?@\[\\\]^|\x7f]")


def _clean_host(raw: str) -> str | None:
    """A host as a client sends it: percent-decoded, IDNA-encoded, lower case, without one trailing dot."""
    host = urllib.parse.unquote(raw)
    if not host or FORBIDDEN_HOST.search(host):
        return None
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return None
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


def _whatwg_host(url: str) -> str | None:
    """The host a browser would contact for `url`, which starts with a special scheme (None: no host)."""
    scheme = SCHEME.match(url)
    rest = url[scheme.end():].lstrip("/\\")  # any mix of slashes after "http:" (WHATWG: special authority)
    authority = re.split(r"[/\\?#]", rest, maxsplit=1)[0]
    hostport = authority.rsplit("@", 1)[-1]
    if hostport.startswith("["):  # an IPv6 literal
        end = hostport.find("]")
        return hostport[1:end].lower() if end > 0 else None
    return _clean_host(hostport.split(":", 1)[0])


def _urllib_host(url: str) -> str | None:
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None
    return (host if ":" in host else _clean_host(host)) if host else None  # ":": an IPv6 literal


def host(value: str) -> str | None:
    """The host an e-mail address or a web address points at, lower case; None when it has none or when the
    parsers disagree (see the module docstring)."""
    value = re.sub(r"[\t\n\r]", "", value).strip("\x00 ")
    email = EMAIL.fullmatch(value)
    if email:
        return _clean_host(email.group(1))
    scheme = SCHEME.match(value)
    if scheme and scheme.group(1).lower() == "mailto":
        return host(value[scheme.end():].split("?", 1)[0])
    if scheme and scheme.group(1).lower() not in SPECIAL:
        if not re.fullmatch(r"[0-9]+", value[scheme.end():].split("/", 1)[0]):  # host:port is not a scheme
            return None
        scheme = None
    if not scheme and "@" in value:  # neither an e-mail address nor a plain web address: ambiguous
        return None
    url = value if scheme else "http://" + value
    ours = _whatwg_host(url)
    return ours if ours is not None and ours == _urllib_host(url) else None


def in_domains(value_host: str | None, domains) -> bool:
    """Whether a host is one of `domains` or under one of them."""
    if value_host is None:
        return False
    return any(value_host == d.lower().rstrip(".") or value_host.endswith("." + d.lower().rstrip("."))
               for d in domains)


def in_paths(value: str, prefixes, root: str | None = None) -> bool:
    """Whether a path lies under one of `prefixes`: absolute, or relative to `root` when the policy names one
    (then relative prefixes are under the root too). ".." components and NUL bytes are refused outright."""
    if "\x00" in value or ".." in re.split(r"[/\\]", value) or "\\" in value:
        return False
    if not value.startswith("/"):
        if root is None:
            return False
        value = posixpath.join(root, value)
    norm = posixpath.normpath(value)
    for p in prefixes:
        full = posixpath.normpath(p if p.startswith("/") else posixpath.join(root or "/", p))
        if norm == full or norm.startswith(full.rstrip("/") + "/"):
            return True
    return False
