"""Talks to the control plane over gRPC and turns every failure into a one-line `CliError`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from moorage.cli.errors import CliError

if TYPE_CHECKING:
    from moorage.cli.config import Config
    from moorage.model.kinds import Kind

# Responses carry whole objects (an apply returns each object and its previous version), so
# gRPC's default 4 MiB receive limit would fail large lists and applies near the 3 MiB cap.
MAX_RECEIVE_BYTES = 256 * 1024 * 1024

# gRPC status name -> the reason kubectl shows in `Error from server (<Reason>): ...`.
_REASONS = {
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "ABORTED": "Conflict",
    "INVALID_ARGUMENT": "Invalid",
    "PERMISSION_DENIED": "Forbidden",
    "UNAUTHENTICATED": "Unauthorized",
    "RESOURCE_EXHAUSTED": "TooManyRequests",
    "DEADLINE_EXCEEDED": "Timeout",
    "FAILED_PRECONDITION": "BadRequest",
    "OUT_OF_RANGE": "BadRequest",
    "UNAVAILABLE": "ServiceUnavailable",
    "INTERNAL": "InternalError",
    "UNKNOWN": "InternalError",
    "DATA_LOSS": "InternalError",
}

# How gRPC core words a failure to connect, as opposed to a server that answered UNAVAILABLE.
_CONNECT_FAILURES = (
    "failed to connect", "connection refused", "dns resolution failed", "socket closed",
    "connections to all backends failing", "name resolution", "no route to host",
    "connection reset", "network is unreachable", "timeout occurred", "connect failed",
    "errors resolving", "lookup failed",
)


def _channel_credentials(config: Config):
    from moorage.credentials import CredentialsError, channel_credentials

    if not config.credentials:
        raise CliError(
            f"error: no credentials to talk to {config.server}: pass --credentials FILE, set "
            "MOOR_CREDENTIALS or put `credentials: FILE` in the config file (the control "
            "plane writes admin.pem into its state dir)")
    try:
        return channel_credentials(config.credentials)
    except CredentialsError as err:
        raise CliError(f"error: {err} (from {config.credentials_source})") from None


def qualified_plural(kind: Kind) -> str:
    """`deployments.apps`, `pods`: how kubectl names a resource type in error messages."""
    group = kind.api_version.split("/")[0] if "/" in kind.api_version else ""
    return f"{kind.plural}.{group}" if group else kind.plural


def rpc_error(exc, server: str, timeout: float | None = None) -> CliError:
    """Maps a grpc.RpcError to the line(s) a user should read."""
    code = exc.code()
    name = getattr(code, "name", str(code))
    details = (exc.details() or "").strip()
    low = details.lower()
    try:
        trailing = dict(exc.trailing_metadata() or ())
    except (AttributeError, TypeError, ValueError):
        trailing = {}
    # Every answer from a control plane carries this mark: it answered, however it failed.
    answered = trailing.get("moorage-server") == "1"
    if name == "UNAVAILABLE" and (trailing.get("moorage-error") == "etcd-unavailable" or (
            answered and low.startswith("etcd is unavailable"))):
        reason = details.removeprefix("etcd is unavailable").lstrip(": ") or "no answer"
        return CliError(f"error: the control plane at {server} answered, but its etcd is "
                        f"unavailable ({' '.join(reason.split())}); retry once etcd is back (a "
                        "local etcd is restarted by the control plane; check an external one)",
                        reason="ServiceUnavailable")
    if name == "UNAVAILABLE" and answered:
        return CliError(f"Error from server (ServiceUnavailable): {' '.join(details.split())}",
                        reason="ServiceUnavailable")
    if name == "UNAVAILABLE" and ("handshake" in low or "certificate" in low):
        from moorage.model.hostport import host_of

        host = host_of(server)
        return CliError(f"error: TLS with the control plane at {server} failed: its certificate "
                        "is not from the CA in your credentials, or does not name "
                        f"{host} (moor-controlplane --tls-san {host} adds it)")
    if name == "UNAVAILABLE" and _is_connect_failure(details):
        return CliError(f"error: cannot reach the Moorage control plane at {server} "
                        "(is it running? set --server, MOOR_SERVER or the config file)")
    if name == "DEADLINE_EXCEEDED" and details.lower() in ("", "deadline exceeded"):
        # The client's own deadline: say which knob controls it.
        limit = f" within {timeout:g}s" if timeout else ""
        return CliError(f"Error from server (Timeout): no answer from {server}{limit} "
                        "(raise --request-timeout)", reason="Timeout")
    if name == "INVALID_ARGUMENT":
        lines = [line.strip() for line in details.splitlines() if line.strip()]
        if len(lines) > 1:
            # One validation error per line, so each becomes its own `error:` line.
            return CliError("\n".join(f"error: {line}" for line in lines), reason="Invalid")
    if name == "UNIMPLEMENTED":
        return CliError(f"error: the server at {server} does not support this request "
                        f"(an older Moorage version?): {details or 'unimplemented'}")
    if name == "CANCELLED":
        return CliError(f"error: the request was cancelled: {details or 'cancelled'}")
    reason = _REASONS.get(name, name.title().replace("_", ""))
    text = " ".join(details.split()) or name.lower().replace("_", " ")
    return CliError(f"Error from server ({reason}): {text}", reason=reason)


def _is_connect_failure(details: str) -> bool:
    lowered = details.lower()
    return not lowered or any(marker in lowered for marker in _CONNECT_FAILURES)


class Client:
    """One channel to one control plane, with the token and deadline applied to every call."""

    def __init__(self, config: Config, timeout: float | None = 30.0):
        import grpc

        from moorage.v1 import api_pb2_grpc

        self._grpc = grpc
        self.server = config.server
        self.timeout = timeout if timeout and timeout > 0 else None
        self._metadata = None
        self.channel = grpc.secure_channel(
            config.server, _channel_credentials(config),
            options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)])
        self._channel = self.channel
        self._stub = api_pb2_grpc.ClusterStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, method: str, request, not_found: tuple[Kind, str] | None = None):
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout, metadata=self._metadata)
        except self._grpc.RpcError as exc:
            raise self._error(exc, not_found) from None

    def _error(self, exc, not_found: tuple[Kind, str] | None = None) -> CliError:
        if not_found is not None and exc.code() == self._grpc.StatusCode.NOT_FOUND:
            # Named like kubectl, whichever way the server words it, so scripts can match.
            kind, name = not_found
            return CliError(
                f'Error from server (NotFound): {qualified_plural(kind)} "{name}" not found',
                reason="NotFound")
        return rpc_error(exc, self.server, self.timeout)

    def apply(self, manifests, dry_run: bool = False, create_only: bool = False):
        """Creates or updates the objects; with `create_only` one that exists already fails
        it all (AlreadyExists), as `kubectl create`."""
        from moorage.v1 import api_pb2

        return self._call("Apply", api_pb2.ApplyRequest(manifests=manifests, dry_run=dry_run,
                                                        create_only=create_only))

    def explain(self, manifests):
        from moorage.v1 import api_pb2

        return self._call("Explain", api_pb2.ExplainRequest(manifests=manifests))

    def get(self, kind: Kind, namespace: str, name: str):
        """The object itself (unwrapped from `Object`)."""
        from moorage.model import kinds
        from moorage.v1 import api_pb2

        request = api_pb2.GetRequest(kind=kind.name, namespace=namespace, name=name)
        return kinds.unwrap(self._call("Get", request, not_found=(kind, name)))

    def list(self, kind: Kind, namespace: str = "", all_namespaces: bool = False,
             label_selector: str = "", field_selector: str = ""):
        from moorage.v1 import api_pb2

        return self._call("List", api_pb2.ListRequest(
            kind=kind.name, namespace=namespace, all_namespaces=all_namespaces,
            label_selector=label_selector, field_selector=field_selector))

    def delete(self, kind: Kind, namespace: str, name: str, grace: int | None = None):
        """Deletes an object; `grace` (pods) overrides terminationGracePeriodSeconds, 0 being
        a force delete. Returns the DeleteResponse (the object as marked or removed)."""
        from moorage.v1 import api_pb2

        request = api_pb2.DeleteRequest(kind=kind.name, namespace=namespace, name=name)
        if grace is not None:
            request.grace_period_seconds = grace
        return self._call("Delete", request, not_found=(kind, name))

    def scale(self, kind: Kind, namespace: str, name: str, replicas: int):
        from moorage.v1 import api_pb2

        request = api_pb2.ScaleRequest(kind=kind.name, namespace=namespace, name=name,
                                       replicas=replicas)
        return self._call("Scale", request, not_found=(kind, name))

    def rotate_secrets_key(self):
        from moorage.v1 import api_pb2

        return self._call("RotateSecretsKey", api_pb2.RotateSecretsKeyRequest())

    def version(self):
        from moorage.v1 import api_pb2

        return self._call("Version", api_pb2.VersionRequest())

    def watch(self, kind: Kind, namespace: str = "", all_namespaces: bool = False,
              resource_version: str = "", label_selector: str = ""):
        """Yields WatchEvents until the server ends the stream; cancels it when abandoned."""
        from moorage.v1 import api_pb2

        request = api_pb2.WatchRequest(
            kind=kind.name, namespace=namespace, all_namespaces=all_namespaces,
            resource_version=resource_version, label_selector=label_selector)
        # No deadline: a watch is meant to run until the user stops it.
        stream = self._stub.Watch(request, metadata=self._metadata)
        try:
            yield from stream
        except self._grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            stream.cancel()
