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
    hardlinks: dict[str, str] = field(default_factory=dict)  # path -> existing path
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
        for path, existing in self.hardlinks.items():
            os.link(os.path.join(context, existing), os.path.join(context, path))
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
ARG ARG_FIRST=arg-first
ENV ARG_FIRST=env-after
ENV NO_VALUE=env-kept
ARG NO_VALUE
RUN echo "global=$GLOBAL stage=$STAGE_ARG over=$OVERRIDDEN outer=$NOT_REDECLARED \\
 first=$ARG_FIRST novalue=$NO_VALUE" > /args.txt
ENV STAGE_ENV=${{STAGE_ARG}}-env OVER_ENV=$OVERRIDDEN
ARG LATE
RUN echo "late=${{LATE:-unset}} alt=${{STAGE_ARG:+set}}" > /late.txt
LABEL stage.arg=$STAGE_ARG global=${{GLOBAL}}
WORKDIR /w/$STAGE_ARG
""", build_args={"OVERRIDDEN": "from-cli", "GLOBAL": "g-cli", "LATE": "l-cli"})

# An ARG with a value declared after an ENV of the same name (in the stage or inherited from
# the base image): BuildKit gives the ARG's value to later RUNs and expansions, while the
# stored Env keeps the ENV's (the classic builder keeps the ENV everywhere).
ARGS_AFTER_ENV = Case("args-after-env", f"""\
FROM {BASE} AS parent
ENV INHERITED=from-parent

FROM parent
ARG INHERITED
ENV FROM_ENV=env-value
ARG FROM_ENV=arg-value
ENV FROM_CLI=env-before-cli
ARG FROM_CLI
RUN echo "inherited=$INHERITED env=$FROM_ENV cli=$FROM_CLI" > /args.txt
ENV COPIED=$FROM_ENV-$FROM_CLI-$INHERITED
LABEL copied=$FROM_ENV
""", build_args={"FROM_CLI": "cli-value", "INHERITED": "cli-inherited"})

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

def _tarball() -> bytes:
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, mode, uid in (("pkg/bin/tool", b"#!/bin/sh\n", 0o755, 0),
                                       ("pkg/share/doc.txt", b"doc\n", 0o644, 1000),
                                       ("pkg/setuid", b"s", 0o4755, 0)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, 1
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pkg/bin/tool-link")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "tool", 1
        tf.addfile(link)
    return gzip.compress(buf.getvalue(), mtime=0)


# COPY's and ADD's rules: wildcards, renames, variables in paths, --chmod (BuildKit only),
# setuid bits and empty directories from the context, a directory source (its contents are
# copied, not its own mode), and local archives ADD unpacks (twice: one layer twice).
COPY_RULES = Case("copy-rules", f"""\
FROM {BASE}
ENV DEST=/opt/app
COPY src/*.c $DEST/c/
COPY ["name with space.txt", "/opt/spaced/"]
COPY hello.txt /opt/renamed.txt
COPY hello.txt src/a.c /opt/multi/
COPY --chmod=0640 hello.txt /opt/chmod.txt
COPY --chmod=0750 src/ /opt/chmod-dir/
COPY setuid empty/ /opt/perm/
COPY empty /opt/empty
COPY private/ /opt/private/
COPY private /opt/private-named
RUN mkdir -m 0711 /opt/exists
COPY --chown=1:2 private /opt/exists/
ADD pkg.tar.gz /opt/unpacked/
ADD pkg.tar.gz /opt/unpacked/
ADD hello.txt /opt/added/
RUN ["/bin/sh", "-c", "ls -R /opt > /opt/listing"]
""", files={"src/a.c": "a\n", "src/b.c": "b\n", "src/skip.h": "h\n", "hello.txt": "hi\n",
            "name with space.txt": "sp\n", "setuid": "s\n", "empty/.keep": "",
            "private/key": "k\n", "private/sub/more": "m\n",
            "pkg.tar.gz": _tarball()},
    modes={"setuid": 0o4755, "private": 0o700, "private/sub": 0o750}, legacy=False)

# What RUN changes beyond new files: metadata-only changes to lower files (overlay copy-up),
# a directory turned into a symlink and back, fifos, hard links, odd names.
RUN_CHANGES = Case("run-changes", f"""\
FROM {BASE}
RUN mkdir -p /d/sub /l && echo x > /d/sub/x && ln -s /d /link-to-d && echo y > /l/y
RUN chmod 0600 /etc/group && chown 65534:65534 /var/www && chmod g+s /var/www \\
 && rm -rf /d && ln -s /etc /d && rm /link-to-d && mkdir /link-to-d && echo z > /link-to-d/z
RUN mkfifo /fifo && echo h > /h1 && ln /h1 /h2 && ln /h1 /l/h3 \\
 && echo u > "/\u00e9t\u00e9 and spaces" && mkdir -p /a/b/c/d/e/f && echo deep > /a/b/c/d/e/f/g
RUN chmod 0640 /h1 && rm /l/y
""")

# Bases and sources other than the busybox stage: scratch, COPY --from an image by name, a
# stage's files with --chown, WORKDIR after USER, hard links in the context.
BASES = Case("bases", f"""\
FROM {BASE} AS tools
RUN mkdir -p /out/bin && cp /bin/busybox /out/bin/ && ln -s busybox /out/bin/sh \\
 && echo cfg > /out/cfg && chmod 0600 /out/cfg

FROM scratch AS minimal
COPY --from=tools /out/ /
COPY --from={BASE} /etc/passwd /etc/group /etc/
COPY --from=0 --chown=1:2 /out/cfg /owned/cfg
COPY hard-a hard-b /links/
USER nobody
WORKDIR /home/nobody/work
ENV SCRATCH=yes
CMD ["/bin/sh"]
""", files={"hard-a": "shared\n"}, hardlinks={"hard-b": "hard-a"}, target="minimal")

def _app_tarball() -> bytes:
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("app/VERSION", b"1.0\n"), ("app/lib/util.sh", b"echo util\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


# A Dockerfile as people write them: comments inside a continued RUN, `WORKDIR /app` +
# `COPY --chown . .` under a .dockerignore with an exception, a USER writing in its home, PATH
# extended, ARG into LABEL, every metadata instruction a service image has, ADD of a tarball.
REALISTIC = Case("realistic", f"""\
# syntax is not a directive here: a plain comment
ARG VERSION=1.0
FROM {BASE}
ARG VERSION
LABEL org.opencontainers.image.version=$VERSION maintainer="ops team"
SHELL ["/bin/sh", "-ec"]
RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd \\
    # the group too
    && echo 'app:x:1000:' >> /etc/group \\

    && mkdir -p /home/app \\
    # and its home
    && chown 1000:1000 /home/app
ENV PATH=/app/bin:$PATH APP_ENV=production
WORKDIR /app
COPY --chown=1000:1000 . .
ADD app.tar.gz /opt/
USER 1000
RUN echo "$HOME $(id -u) $PATH" > $HOME/whoami && tool > $HOME/tool.out && mkdir $HOME/.cache
HEALTHCHECK --interval=30s CMD wget -q -O- http://localhost:8080/ || exit 1
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/entry.sh"]
CMD ["serve"]
""", files={".dockerignore": ".git\n**/*.pyc\n!pkg/keep.pyc\n*.md\n",
            ".git/HEAD": "ref: refs/heads/main\n", ".git/objects/ab/cd": "x",
            "README.md": "readme\n", "pkg/a.py": "a\n", "pkg/a.pyc": "c", "pkg/keep.pyc": "k",
            "pkg/sub/b.pyc": "b", "pkg/sub/b.py": "b\n",
            "entry.sh": "#!/bin/sh\necho \"entry $@\"\n", "bin/tool": "#!/bin/sh\necho tool\n",
            "app.tar.gz": _app_tarball()},
    modes={"entry.sh": 0o755, "bin/tool": 0o755}, build_args={"VERSION": "2.1"})

# A Windows-style Dockerfile: CRLF line ends, the backtick escape, backslashes kept in words.
ESCAPE = Case("escape", f"# escape=`\r\nFROM {BASE}\r\nRUN echo a > /a `\r\n"
              "    && echo 'C:\\path\\x' > /win\r\n"
              "COPY [\"conf.ini\", \"/conf/\"]\r\nENV DIR=C:\\data\r\nWORKDIR /w\r\n",
              files={"conf.ini": "[a]\r\nb=1\r\n"})

# A wildcard matching one file copies it under dest's name (`COPY target/*.jar app.jar`, from
# the context or a stage); several go into a dir.
WILDCARD_ONE = Case("wildcard-one", f"""\
FROM {BASE} AS build
RUN mkdir /t && echo built > /t/app-2.0.jar
FROM {BASE}
WORKDIR /srv
COPY target/*.jar app.jar
COPY --from=build /t/*.jar /opt/built.jar
COPY conf/*.ini /etc/app/
COPY target/*.jar conf/*.ini /many/
""", files={"target/app-1.0.jar": "jar\n", "target/app-1.0.pom": "pom\n", "conf/a.ini": "a\n",
            "conf/b.ini": "b\n"})

# The COPY/ADD forms Dockerfiles use most: a file to "." and to an existing dir without a
# slash, a dir to a new path, a tarball ADDed to a dir without a slash, a file that only looks
# like an archive (copied as it is).
COPY_FORMS = Case("copy-forms", f"""\
FROM {BASE}
WORKDIR /app
COPY requirements.txt .
COPY requirements.txt /etc
COPY src /app/src
COPY src/ /app/src2
ADD pkg.tar.gz /opt
ADD fake.tar.gz /opt/fake/
COPY ["requirements.txt", "./copied.txt"]
""", files={"requirements.txt": "flask\n", "src/main.py": "print()\n", "src/lib/x.py": "x\n",
            "pkg.tar.gz": _tarball(), "fake.tar.gz": "not gzip at all\n"})

# .dockerignore lines as projects write them: a leading "/" or "./", dirs at any depth, the
# Dockerfile itself, trailing slashes and spaces, an exception under an excluded dir's glob.
DOCKERIGNORE_FORMS = Case("dockerignore-forms", f"""\
FROM {BASE}
COPY . /ctx/
""", files={".dockerignore": "/build\n./tmp\n**/__pycache__\nnode_modules/\nDockerfile*\n"
                             "*.swp  \nlogs/*\n!logs/keep.log\n",
            "build/out": "o", "tmp/t": "t", "src/__pycache__/a.pyc": "c", "src/a.py": "a",
            "__pycache__/b.pyc": "b", "node_modules/x/index.js": "n", "a.swp": "s",
            "logs/a.log": "l", "logs/keep.log": "k", "sub/build/kept": "k", "sub/tmp/kept": "k"})

CASES = (SINGLE, MULTISTAGE, WHITEOUTS, USERS_RUN, USERS_COPY, ARGS, ARGS_AFTER_ENV,
         DOCKERIGNORE, CONFIGS, SYMLINKS, COPY_RULES, RUN_CHANGES, BASES, REALISTIC, ESCAPE,
         WILDCARD_ONE, COPY_FORMS, DOCKERIGNORE_FORMS)
