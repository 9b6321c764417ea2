"""Dockerfiles and contexts that `moor build` and `docker build` both build, for the
comparison tests and the benchmark: each case writes its context into a directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

BASE = "busybox:test"  # tests/imagebuild.py's busybox, loaded into both builders


@dataclass(frozen=True)
class Case:
    name: str
    dockerfile: str
    files: dict[str, bytes | str] = field(default_factory=dict)  # path -> content
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    modes: dict[str, int] = field(default_factory=dict)  # path -> chmod
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    legacy: bool = True  # Docker's legacy builder builds it too (it runs every stage)

    def write(self, context: str) -> str:
        os.makedirs(context, exist_ok=True)
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(self.dockerfile)
        for path, data in self.files.items():
            full = os.path.join(context, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        for path, target in self.symlinks.items():
            full = os.path.join(context, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            os.symlink(target, full)
        for path, mode in self.modes.items():
            os.chmod(os.path.join(context, path), mode)
        return context


SINGLE = Case("single", f"""\
FROM {BASE}
RUN mkdir -p /app/data && echo hello > /app/hello && chmod 0751 /app/data
COPY hello.txt /app/
COPY src/ /app/src/
COPY bin/run.sh /usr/local/bin/
ADD archive.txt /app/added.txt
WORKDIR /app
CMD ["cat", "/app/hello"]
""", files={"hello.txt": "hi\n", "src/a.c": "int a;\n", "src/sub/b.c": "int b;\n",
            "bin/run.sh": "#!/bin/sh\necho run\n", "archive.txt": "added\n"},
    modes={"bin/run.sh": 0o755, "src/sub/b.c": 0o600})

MULTISTAGE = Case("multistage", f"""\
FROM {BASE} AS build
RUN mkdir /out && echo built > /out/artifact && echo x > /out/x && chmod 0700 /out/x
FROM {BASE} AS unused
RUN false
FROM {BASE} AS final
COPY --from=build /out/artifact /final/artifact
COPY --from=0 /out /final/out
RUN cat /final/artifact > /final/copied
FROM final AS after
RUN echo never > /never
""", target="final", legacy=False)

WHITEOUTS = Case("whiteouts", f"""\
FROM {BASE}
RUN mkdir -p /data/sub && echo a > /data/a && echo b > /data/sub/b && echo keep > /keep \\
 && echo gone > /gone
RUN rm /gone /etc/motd
RUN rm -rf /data && mkdir /data && echo new > /data/new
RUN rm -rf /var/www && mkdir -p /var/www/html && echo page > /var/www/html/index.html
RUN mv /keep /kept && ln -s /kept /keep && ln /kept /kept.hard
""")

# /etc/passwd and /etc/group made by a RUN, then names resolved by COPY --chown and USER.
USERS_RUN = Case("users-run", f"""\
FROM {BASE}
RUN echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd \\
 && echo 'app:x:1000:' >> /etc/group && mkdir -p /home/app && chown app:app /home/app
COPY --chown=app:app owned.txt /home/app/
COPY --chown=1001:1002 ids.txt /srv/ids.txt
COPY --chown=app dir/ /home/app/dir/
USER app
RUN echo me > /home/app/me && echo "$(id -u):$(id -g)" > /home/app/id.txt
USER 1000:1000
RUN mkdir -p /home/app/work && touch /home/app/work/made-by-user
""", files={"owned.txt": "mine\n", "ids.txt": "by ids\n", "dir/a": "a\n", "dir/sub/b": "b\n"})

# The same with the account files COPY'd in from the context.
USERS_COPY = Case("users-copy", f"""\
FROM {BASE}
COPY passwd /etc/passwd
COPY group /etc/group
COPY --chown=web:staff site/ /srv/site/
COPY --chown=web site/index.html /srv/index.html
USER web:staff
RUN echo "$(id -u):$(id -g)" > /tmp/id.txt
""", files={"passwd": "root:x:0:0:root:/root:/bin/sh\nweb:x:33:33:web:/srv:/bin/sh\n",
            "group": "root:x:0:\nstaff:x:50:\nweb:x:33:\n",
            "site/index.html": "<p>site</p>\n", "site/css/a.css": "p{}\n"})

ARGS = Case("args", f"""\
ARG BASE={BASE}
ARG GLOBAL=g-default
ARG NOT_REDECLARED=outer
FROM ${{BASE}}
ARG GLOBAL
ARG STAGE_ARG=s-default
ARG OVERRIDDEN=o-default
ENV FROM_ENV=env-value
ARG FROM_ENV=arg-value
RUN echo "global=$GLOBAL stage=$STAGE_ARG over=$OVERRIDDEN env=$FROM_ENV \\
 outer=$NOT_REDECLARED" > /args.txt
ENV STAGE_ENV=${{STAGE_ARG}}-env OVER_ENV=$OVERRIDDEN
ARG LATE
RUN echo "late=${{LATE:-unset}} alt=${{STAGE_ARG:+set}}" > /late.txt
LABEL stage.arg=$STAGE_ARG global=${{GLOBAL}}
WORKDIR /w/$STAGE_ARG
""", build_args={"OVERRIDDEN": "from-cli", "GLOBAL": "g-cli", "LATE": "l-cli"})

DOCKERIGNORE = Case("dockerignore", f"""\
FROM {BASE}
COPY . /ctx/
""", files={".dockerignore": "# comment\n**/*.log\n!keep.log\nbuild/\ndocs/**/*.md\n"
                             "!docs/README.md\n.git\n*/tmp*\n",
            "a.log": "a", "keep.log": "k", "sub/b.log": "b", "sub/deeper/c.log": "c",
            "build/out": "o", "docs/a.md": "a", "docs/x/y.md": "y", "docs/README.md": "r",
            "docs/ok.txt": "ok", "src/main.c": "m", ".git/HEAD": "h", "sub/tmpfile": "t",
            "sub/keep": "k"})

CONFIGS = Case("configs", f"""\
FROM {BASE}
ENV A=1 B="two words" C=${{A}}-x
ENV D plain form
LABEL version="1.0" description="a \\"quoted\\" label" multi.a=1 multi.b=2
EXPOSE 80 443/tcp 53/udp
VOLUME /data
VOLUME ["/logs"]
WORKDIR /srv
WORKDIR rel
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hi"]
HEALTHCHECK --interval=5s --timeout=3s --retries=2 --start-period=1s \\
  CMD wget -q -O- http://localhost/ || exit 1
SHELL ["/bin/sh", "-ec"]
RUN echo "shell $A" > /shell.txt
STOPSIGNAL SIGTERM
USER nobody
""", labels={"from.cli": "yes"})

SYMLINKS = Case("symlinks", f"""\
FROM {BASE}
COPY . /ctx/
COPY rel /single-rel
COPY linkdir/ /linkdir-contents/
""", files={"target.txt": "target\n", "dir/file": "f\n"},
    symlinks={"rel": "target.txt", "abs-out": "/etc/shadow", "up-out": "../../outside",
              "dangling": "nowhere", "linkdir": "dir", "dir/back": ".."})

CASES = (SINGLE, MULTISTAGE, WHITEOUTS, USERS_RUN, USERS_COPY, ARGS, DOCKERIGNORE, CONFIGS,
         SYMLINKS)
