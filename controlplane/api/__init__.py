"""gRPC servicers: validate requests, apply them to the store, stream watches."""
