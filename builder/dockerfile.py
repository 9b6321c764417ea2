"""The Dockerfile front end (pure): parser directives, escapes, line continuations, comments,
exec-form JSON, instructions with their flags, stages, and errors naming the line.

Interface (the executor, buildcmd/executor, relies on it):

  parse(text, path="Dockerfile") -> Dockerfile        raises DockerfileError
  Dockerfile.meta_args: tuple[Arg, ...]                ARGs before the first FROM
  Dockerfile.stages:    tuple[Stage, ...]
  Stage.index, .name ("" when unnamed), .base (FROM's image word, unexpanded), .platform,
       .instructions (Instruction, FROM excluded), .line
  Instruction.keyword ("RUN", ...), .flags {"from": "...", "chown": ...}, .args (tuple of
       words; shell form: one string), .exec_form, .line (1-based, first line), .original
       (as written, continuations joined: what progress prints)
  stage_order(df, target, build_args) -> list[ResolvedStage]   the stages the target needs, in
       build order, with each FROM expanded by the meta ARGs; refuses missing stages, cycles,
       ARGs without value in FROM (DockerfileError naming the line)
"""
