"""Prometheus metrics of the control plane, and the decorator that times every API method."""

from __future__ import annotations

import functools
import time

import grpc
from prometheus_client import Counter, Gauge, Histogram

API_LATENCY = Histogram(
    "moorage_api_request_duration_seconds", "Latency of Cluster API calls.",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
API_REQUESTS = Counter(
    "moorage_api_requests_total", "Cluster API calls by method and status code.",
    ["method", "code"])
WATCHES = Gauge("moorage_api_watches", "Watch streams open now.", ["kind"])
ETCD_UP = Gauge("moorage_etcd_up", "1 while etcd answers this control plane, else 0.")
LOCAL_ETCD_RESTARTS = Counter("moorage_local_etcd_restarts_total",
                              "Times the control plane restarted its local etcd after it died.")
ETCD_LATENCY = Histogram(
    "moorage_etcd_request_duration_seconds", "Latency of etcd requests made by the API.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


def observed(method_name: str):
    """Times a unary servicer method and counts it under the status code it ended with."""

    def wrap(fn):
        @functools.wraps(fn)
        async def handler(self, request, context):
            start = time.perf_counter()
            code = "OK"
            try:
                return await fn(self, request, context)
            except Exception:
                code = _code(context)
                raise
            finally:
                if code == "OK":
                    code = _code(context)
                API_LATENCY.labels(method_name, code).observe(time.perf_counter() - start)
                API_REQUESTS.labels(method_name, code).inc()
        return handler
    return wrap


def _code(context) -> str:
    try:
        code = context.code()
    except (AttributeError, RuntimeError):  # not every context exposes the code yet
        return "UNKNOWN"
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)

SCHEDULE_ATTEMPTS = Counter(
    "moorage_scheduler_schedule_attempts_total",
    "Scheduling attempts by result (scheduled, unschedulable, conflict, error).", ["result"])
SCHEDULING_LATENCY = Histogram(
    "moorage_scheduler_e2e_scheduling_duration_seconds",
    "From a pod entering the scheduling queue to its binding being written.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
PENDING_PODS = Gauge("moorage_scheduler_pending_pods", "Pods waiting to be scheduled.")
LEADER = Gauge(
    "moorage_leader", "1 while this replica leads (runs the scheduler and controllers), else 0.",
    ["replica"])
SCHEDULE_ATTEMPT_LATENCY = Histogram(
    "moorage_scheduler_scheduling_attempt_duration_seconds",
    "One scheduling attempt, from deciding a batch to the pod's binding (or its failure), by "
    "result (scheduled, unschedulable, conflict, error).", ["result"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
