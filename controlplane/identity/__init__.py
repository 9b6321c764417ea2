"""Cluster identity: the CA, join tokens, the join handshake and per-call authorization."""

from controlplane.identity.auth import (
    ANONYMOUS_METHODS,
    Decision,
    Identity,
    admin_channel_credentials,
    authorize,
    enforce,
    guard,
    is_tls,
    join_server_credentials,
    owns,
    peer_identity,
    server_credentials,
)
from controlplane.identity.ca import ADMIN_ORG, NODE_ORG, CAError, ClusterCA, node_common_name
from controlplane.identity.join import JoinError, JoinResult, handle_join, handle_renew
from controlplane.identity.tokens import (
    TokenError,
    TokenInfo,
    create_token,
    list_tokens,
    parse_token,
    revoke_token,
    token_id,
    verify_token,
)

__all__ = [
    "ADMIN_ORG", "ANONYMOUS_METHODS", "NODE_ORG", "CAError", "ClusterCA", "Decision", "Identity",
    "JoinError", "JoinResult", "TokenError", "TokenInfo", "admin_channel_credentials",
    "authorize", "create_token", "enforce", "guard", "handle_join",
    "handle_renew", "is_tls", "join_server_credentials", "list_tokens", "node_common_name", "owns",
    "parse_token", "peer_identity", "revoke_token", "server_credentials",
    "token_id", "verify_token",
]
