"""What each `moor` subcommand does, given its parsed arguments and a lazily opened client."""

from __future__ import annotations

import difflib
import sys

from moorage.cli import printers
from moorage.cli.client import Client, qualified_plural
from moorage.cli.errors import CliError


class Context:
    """The parsed arguments plus a client that is only connected when a command needs it."""

    def __init__(self, args):
        self.args = args
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            from moorage.cli import config

            settings = config.load(getattr(self.args, "server", None),
                                   credentials_flag=getattr(self.args, "credentials", None))
            self._client = Client(settings, getattr(self.args, "request_timeout", 30.0))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def out(text: str = "") -> None:
    print(text, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- shared helpers ------------------------------------------------------------------------

def lookup_kind(name: str):
    from moorage.model import kinds

    try:
        return kinds.lookup(name)
    except kinds.UnknownKind as exc:
        raise CliError(f"error: {exc}") from None


def resolve_target(kind_arg: str, names: list[str]):
    """`KIND NAME...` or `KIND/NAME...` (one kind) -> (Kind, names)."""
    if "/" not in kind_arg:
        if any("/" in n for n in names):
            raise CliError("error: give either KIND NAME... or KIND/NAME..., not both")
        return lookup_kind(kind_arg), list(names)
    kind = None
    found = []
    for arg in [kind_arg, *names]:
        kind_text, _, name = arg.partition("/")
        if not kind_text or not name or "/" in name:
            raise CliError(f'error: "{arg}" is not in KIND/NAME form')
        this = lookup_kind(kind_text)
        if kind is not None and this is not kind:
            raise CliError("error: all KIND/NAME arguments must be of one kind")
        kind = this
        found.append(name)
    return kind, found


def not_found(kind, name: str) -> CliError:
    return CliError(f'Error from server (NotFound): {qualified_plural(kind)} "{name}" not found',
                    reason="NotFound")


def namespace_for(kind, namespace: str | None) -> str:
    from moorage.model.kinds import DEFAULT_NAMESPACE

    if not kind.namespaced:
        return ""  # cluster-scoped: a -n given out of habit is ignored, as kubectl does
    return namespace or DEFAULT_NAMESPACE


def kind_by_name(name: str):
    from moorage.model import kinds

    try:
        return kinds.lookup(name)
    except kinds.UnknownKind:
        return None


def result_ref(result) -> str:
    kind = kind_by_name(result.kind)
    type_name = printers.qualified_kind(kind) if kind else result.kind.lower()
    return f"{type_name}/{result.name}"


def field_matcher(selector: str):
    """A predicate for the field-selector subset, used on watch events the server can't filter."""
    terms = []
    for part in selector.split(","):
        part = part.strip()
        if not part:
            continue
        for op in ("!=", "==", "="):
            if op in part:
                key, _, value = part.partition(op)
                terms.append((key.strip(), value.strip(), op == "!="))
                break
        else:
            raise CliError(f'error: invalid field selector "{part}": use KEY=VALUE or KEY!=VALUE')

    def matches(obj) -> bool:
        data = printers.object_dict(obj)
        for key, value, negate in terms:
            actual = data
            for step in key.split("."):
                actual = actual.get(step, "") if isinstance(actual, dict) else ""
            if isinstance(actual, bool):
                actual = "true" if actual else "false"
            if (str(actual) == value) == negate:
                return False
        return True
    return matches


def read_manifests(args):
    from moorage.cli import sources

    found = sources.read_sources(args.filename, recursive=args.recursive)
    sources.check_size(found)
    return sources.to_manifests(found)


# ---- apply / diff --------------------------------------------------------------------------

def apply(ctx: Context) -> int:
    from moorage.model import kinds

    args = ctx.args
    response = ctx.client().apply(read_manifests(args), dry_run=args.dry_run)
    suffix = " (dry run)" if args.dry_run else ""
    if args.output in ("yaml", "json"):
        objects = [kinds.unwrap(r.object) for r in response.results if r.HasField("object")]
        data = (printers.object_dict(objects[0]) if len(objects) == 1
                else printers.list_dict(objects, str(response.revision or "")))
        sys.stdout.write(printers.dump(data, args.output))
        return 0
    for result in response.results:
        ref = result_ref(result)
        out(ref if args.output == "name" else f"{ref} {result.action}{suffix}")
    return 0


def _diffable_yaml(obj) -> list[str]:
    if obj is None:
        return []
    data = printers.object_dict(obj)
    # Fields the server changes on every write say nothing about the user's edit.
    data.pop("status", None)
    metadata = data.get("metadata", {})
    metadata.pop("resourceVersion", None)
    metadata.pop("generation", None)
    return printers.dump(data, "yaml").splitlines(keepends=True)


def diff(ctx: Context) -> int:
    """Exit 0 without differences, 1 with some (kubectl's convention; errors exit 2)."""
    from moorage.model import kinds

    response = ctx.client().apply(read_manifests(ctx.args), dry_run=True)
    changed = False
    for result in response.results:
        ref = result_ref(result)
        new = kinds.unwrap(result.object) if result.HasField("object") else None
        old = kinds.unwrap(result.previous) if result.HasField("previous") else None
        lines = list(difflib.unified_diff(_diffable_yaml(old), _diffable_yaml(new),
                                          fromfile=f"live/{ref}", tofile=f"merged/{ref}"))
        if lines:
            changed = True
            sys.stdout.write("".join(line if line.endswith("\n") else line + "\n"
                                     for line in lines))
    sys.stdout.flush()
    return 1 if changed else 0


def explain(ctx: Context) -> int:
    """Exit 0 when every pod would be placed, 1 when some would not (or on errors)."""
    from moorage.cli import explain as render

    response = ctx.client().explain(read_manifests(ctx.args))
    if not response.pods:
        out("no pods to place: the manifests hold no Pod and no Deployment with replicas")
        return 0
    lines, placed = render.render(response)
    for line in lines:
        out(line)
    return 0 if placed else 1


# ---- get -----------------------------------------------------------------------------------

class RowPrinter:
    """Prints objects in the chosen output; keeps table widths steady across watch events."""

    def __init__(self, kind, output: str | None, all_namespaces: bool):
        self.kind = kind
        self.output = output
        self.all_namespaces = all_namespaces and kind.namespaced
        self.widths: list[int] | None = None
        self.documents = 0

    def _rows(self, objects) -> list[list[str]]:
        return [printers.table_row(o, self.kind, self.output == "wide", self.all_namespaces)
                for o in objects]

    def table(self, objects) -> None:
        header = printers.table_header(self.kind, self.output == "wide", self.all_namespaces)
        rows = [header, *self._rows(objects)]
        self.widths = printers.column_widths(rows)
        for line in printers.render_table(rows):
            out(line)

    def one(self, obj) -> None:
        """One object as it arrives from a watch."""
        if self.output == "name":
            out(printers.object_ref(obj))
        elif self.output in ("json", "yaml"):
            text = printers.dump(printers.object_dict(obj), self.output)
            if self.output == "yaml" and self.documents:
                text = "---\n" + text
            self.documents += 1
            sys.stdout.write(text)
            sys.stdout.flush()
        elif self.widths is None:
            self.table([obj])
        else:
            out(printers.format_row(self._rows([obj])[0], self.widths))


def get(ctx: Context) -> int:
    from moorage.model import kinds

    args = ctx.args
    kind, names = resolve_target(args.kind, args.names)
    all_ns = bool(args.all_namespaces) and kind.namespaced
    if names and all_ns:
        raise CliError("error: a resource cannot be retrieved by name across all namespaces")
    namespace = "" if all_ns else namespace_for(kind, args.namespace)
    client = ctx.client()
    resource_version = ""
    if names and not args.watch:
        objects = [client.get(kind, namespace, name) for name in names]
    else:
        response = client.list(kind, namespace, all_ns, args.selector, args.field_selector)
        resource_version = response.resource_version
        objects = [kinds.unwrap(o) for o in response.items]
        if names:
            # A watch needs the list's revision, so named objects come from the list too.
            by_name = {o.metadata.name: o for o in objects}
            for name in names:
                if name not in by_name:
                    raise not_found(kind, name)
            objects = [by_name[n] for n in names]
    objects = printers.sort_for_display(kind, objects)

    printer = RowPrinter(kind, args.output, all_ns)
    if args.watch:
        if objects and args.output in (None, "wide"):
            printer.table(objects)
        else:
            for obj in objects:
                printer.one(obj)
        if not objects and args.output in (None, "wide", "name"):
            err(_nothing_found(kind, namespace, all_ns))
        return _watch(ctx, kind, namespace, all_ns, resource_version, names, printer)
    if args.output in ("json", "yaml"):
        data = (printers.object_dict(objects[0]) if len(names) == 1
                else printers.list_dict(objects, resource_version))
        sys.stdout.write(printers.dump(data, args.output))
    elif not objects:
        err(_nothing_found(kind, namespace, all_ns))
    elif args.output == "name":
        for obj in objects:
            out(printers.object_ref(obj))
    else:
        printer.table(objects)
    return 0


def _nothing_found(kind, namespace: str, all_namespaces: bool) -> str:
    if kind.namespaced and not all_namespaces:
        return f"No resources found in {namespace} namespace."
    return "No resources found"


def _watch(ctx, kind, namespace, all_ns, resource_version, names, printer) -> int:
    from moorage.model import kinds

    args = ctx.args
    matches = field_matcher(args.field_selector) if args.field_selector else None
    wanted = set(names)
    events = ctx.client().watch(kind, namespace, all_ns, resource_version, args.selector)
    try:
        for event in events:
            # RESYNC is followed by every object as ADDED, which reads fine as rows.
            if event.type in ("RESYNC", "BOOKMARK") or not event.object.WhichOneof("object"):
                continue
            obj = kinds.unwrap(event.object)
            if wanted and obj.metadata.name not in wanted:
                continue
            if matches is not None and not matches(obj):
                continue
            printer.one(obj)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a watch is meant to end
    finally:
        events.close()
    return 0


# ---- describe / delete / version -----------------------------------------------------------

def describe(ctx: Context) -> int:
    from moorage.cli import describe as render
    from moorage.model import kinds

    args = ctx.args
    kind, names = resolve_target(args.kind, args.names)
    if not names:
        raise CliError(f'error: name which {kind.name.lower()} to describe '
                       f'("moor describe {kind.plural} NAME")')
    namespace = namespace_for(kind, args.namespace)
    client = ctx.client()
    texts = []
    for name in names:
        obj = client.get(kind, namespace, name)
        events, problem = [], ""
        if kind.name not in render.NO_EVENTS:
            try:
                # Events about cluster-scoped objects may live in any namespace.
                response = client.list(kinds.BY_NAME["Event"], namespace,
                                       all_namespaces=not kind.namespaced,
                                       field_selector=f"involvedObject.name={name}")
                events = [kinds.unwrap(o) for o in response.items]
            except CliError as exc:
                problem = exc.message.splitlines()[0]
        usage = None
        if kind.name == "Node":
            from moorage.cli.streams import node_usage

            usage = node_usage(client, name)
        endpoints = service_endpoints(client, obj) if kind.name == "Service" else None
        texts.append(render.describe(obj, events, problem, usage=usage, endpoints=endpoints))
    sys.stdout.write("\n\n".join(t.rstrip("\n") for t in texts) + "\n")
    return 0


def service_endpoints(client, svc):
    """The service's ready endpoints from its pods now (as the control plane computes them for
    the agents), or None when the pods cannot be listed."""
    from moorage.model import kinds
    from moorage.model.endpoints import service_entry

    if not svc.spec.selector:
        return service_entry(svc, [])
    selector = ",".join(f"{k}={v}" for k, v in sorted(svc.spec.selector.items()))
    try:
        response = client.list(kinds.BY_NAME["Pod"], svc.metadata.namespace,
                               label_selector=selector)
    except CliError:
        return None
    return service_entry(svc, [kinds.unwrap(o) for o in response.items])


def client_version() -> str:
    import moorage

    version = getattr(moorage, "__version__", None)
    if version:
        return str(version)
    from importlib import metadata

    try:
        return metadata.version("moorage")
    except metadata.PackageNotFoundError:
        return "unknown"


def version(ctx: Context) -> int:
    out(f"Client Version: {client_version()}")
    response = ctx.client().version()
    out(f"Server Version: {response.version or 'unknown'}")
    if response.etcd_version:
        out(f"etcd Version: {response.etcd_version}")
    return 0
