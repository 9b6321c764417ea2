"""`HOST:PORT` as operators write it: `10.0.0.2:7440`, `node-1:7440`, `[fd00::2]:7440`."""

from __future__ import annotations


class HostPortError(ValueError):
    """Not HOST:PORT; the message says what was given and what is wanted."""


def split(address: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port); an IPv6 host comes back without its brackets. Without a port, the
    default is used, or HostPortError raised when there is none."""
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise HostPortError(f"{address!r} is not HOST:PORT (an IPv6 host goes in brackets: "
                                "[fd00::1]:7440)")
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise HostPortError(f"{address!r} is not HOST:PORT (put an IPv6 host in brackets: "
                            "[fd00::1]:7440)")
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        if default_port is None:
            raise HostPortError(f"{address!r} is not HOST:PORT: the port is missing")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HostPortError(f"{address!r} is not HOST:PORT: {port_text!r} is not a port "
                            "(1-65535)")
    return host, int(port_text)


def join(host: str, port: int) -> str:
    """`host:port`, bracketing an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_of(address: str) -> str:
    """The host part, for messages and certificates; the whole text when it has no port."""
    try:
        return split(address, default_port=0)[0]
    except HostPortError:
        return address
