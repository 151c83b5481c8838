"""Plan: from parsed instructions to stages and numbered steps, with every semantic check.

No I/O happens here. All problems are collected and raised together, each pointing at the
token it is about; the AppC rules themselves live in ``acbuild.image.manifest_rules``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from acbuild.acfile import instructions as ins
from acbuild.acfile.parse_args import CHOWN
from acbuild.errors import AcbuildError, AcfileError, Span, raise_all
from acbuild.fs.keyed import KeyedFiles
from acbuild.image import manifest_rules as appc
from acbuild.image.hostarch import host_os_arch

# Base references moved to acbuild.plan.baseref; these names stay importable from here.
from acbuild.plan.baseref import BaseRef, Scratch, confine, parse_base

MIN_RUN_MEMORY = 32 << 20  # below this not even the sandbox's helper starts

# ---- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    number: int  # 1-based across the stages that are built
    total: int
    instruction: ins.Instruction
    stage: int  # Stage.index
    # The step cache key (H(parent key, canonical instruction, inputs, ...)), filled in by the
    # executor once the inputs are known: dataclasses.replace(step, key=...).
    key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    index: int  # position among all BEGINs of the file, 0-based (kept when stages are dropped)
    name: str | None
    base: BaseRef
    begin: ins.Begin
    steps: tuple[Step, ...]  # the BEGIN step first


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    file: str
    stages: tuple[Stage, ...]  # only the stages the target needs, in file order
    target: Stage
    sign_keys: tuple[str, ...]
    total_steps: int
    # What the cache keys read, once they are computed (acbuild.fs.keyed); None without.
    keyed: KeyedFiles | None = field(default=None, compare=False)

    def stage_named(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


# ---- planning ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Draft:
    index: int
    begin: ins.Begin
    body: tuple[ins.Instruction, ...]
    base: BaseRef
    needs: frozenset[int]  # indexes of the stages its COPY --from read


def make_plan(
    instructions: Sequence[ins.Instruction],
    *,
    acfile_dir: Path,
    allowed: Sequence[Path] = (),
    target: str | None = None,
    extra_sign_keys: Sequence[str] = (),
) -> Plan:
    """Check the instructions and arrange them into stages and steps.

    Every stage is checked, even one the target does not need, so a file is either right or
    wrong whatever ``target`` is. Only SIGN lines of the target stage count: the other stages
    are never written as images. A BEGIN host path must lie in ``acfile_dir`` or one of
    ``allowed`` (the context and each --allow-path).
    """
    if not instructions:
        raise AcfileError("the Acfile has no instructions", hint="start with 'BEGIN scratch'")
    errors: list[AcbuildError] = []
    drafts = _drafts(instructions, acfile_dir, (acfile_dir, *allowed), errors)
    chosen = _target(drafts, target, errors)
    if chosen is not None and not any(isinstance(i, ins.Name) for i in chosen.body):
        errors.append(AcfileError("no NAME given: add a line such as 'NAME example.com/app'"))
    if chosen is not None:
        errors += _one_signer(chosen.body, extra_sign_keys)
    raise_all(errors)
    assert chosen is not None
    needed = _needed(drafts, chosen)
    stages = _number([d for d in drafts if d.index in needed])
    keys = [i.key for i in chosen.body if isinstance(i, ins.Sign)]
    return Plan(
        file=instructions[0].span.file,
        stages=stages,
        target=next(s for s in stages if s.index == chosen.index),
        sign_keys=tuple(dict.fromkeys([*keys, *extra_sign_keys])),
        total_steps=sum(len(s.steps) for s in stages),
    )


def check_instructions(instructions: Sequence[ins.Instruction]) -> list[AcbuildError]:
    """The checks each instruction needs on its own (names, ranges, paths); for a file that
    does not parse as a whole, whose order and stages cannot be judged."""
    return [error for i in instructions for error in _check(i)]


def begin_path_errors(instructions: Sequence[ins.Instruction], *, acfile_dir: Path,
                      allowed: Sequence[Path] = ()) -> list[AcbuildError]:
    """The BEGIN lines whose host path lies outside ``acfile_dir`` and ``allowed`` (for
    lint, which checks no more of BEGIN than that)."""
    errors: list[AcbuildError] = []
    for i in instructions:
        if isinstance(i, ins.Begin):
            _base(i, acfile_dir, (acfile_dir, *allowed), errors)
    return errors


def _one_signer(body: Sequence[ins.Instruction], extra: Sequence[str]) -> list[AcbuildError]:
    """An image has one signature file, IMAGE.asc, and verification names one signer: a
    second key is a mistake to report, not a signature to drop silently."""
    signs = [i for i in body if isinstance(i, ins.Sign)]
    keys = list(dict.fromkeys([*(i.key for i in signs), *extra]))
    if len(keys) <= 1:
        return []
    place = signs[1].span if len(signs) > 1 else None
    return [AcfileError(
        f"an image is signed with one key, but {len(keys)} are given: {', '.join(keys)}",
        span=place, hint="keep one SIGN line (or one --sign)")]


def _drafts(
    instructions: Sequence[ins.Instruction], acfile_dir: Path, allowed: Sequence[Path],
    errors: list[AcbuildError],
) -> list[_Draft]:
    first = instructions[0]
    if not isinstance(first, ins.Begin):
        errors.append(AcfileError("BEGIN must be the first instruction", span=first.span))
    groups: list[tuple[ins.Begin, list[ins.Instruction]]] = []
    for i in instructions:
        if isinstance(i, ins.Begin):
            groups.append((i, []))
        elif groups:
            groups[-1][1].append(i)
    names: dict[str, int] = {}
    drafts = []
    for index, (begin, body) in enumerate(groups):
        errors += _check_begin(begin, names)
        drafts.append(
            _Draft(
                index=index,
                begin=begin,
                body=tuple(body),
                base=_base(begin, acfile_dir, allowed, errors),
                needs=frozenset(_copy_sources(body, begin, names, errors)),
            )
        )
        if begin.stage is not None:
            names.setdefault(begin.stage, index)
        for i in body:
            errors += _check(i)
        errors += _check_stage(drafts[-1])
    return drafts


def _base(begin: ins.Begin, acfile_dir: Path, allowed: Sequence[Path],
          errors: list[AcbuildError]) -> BaseRef:
    try:
        return confine(parse_base(begin.base, acfile_dir), begin.base, allowed)
    except AcfileError as e:
        errors.append(_error(begin, begin.base, e.message, e.hint))
        return Scratch()


def _check_begin(begin: ins.Begin, names: dict[str, int]) -> list[AcbuildError]:
    if begin.stage is not None and begin.stage in names:
        return [_error(begin, begin.stage, f"stage {begin.stage!r} is already defined")]
    return []


def _copy_sources(
    body: Sequence[ins.Instruction],
    begin: ins.Begin,
    earlier: dict[str, int],
    errors: list[AcbuildError],
) -> set[int]:
    needs: set[int] = set()
    for i, name, token in stage_reads(body):
        if name in earlier:
            needs.add(earlier[name])
            continue
        what = "COPY --from" if isinstance(i, ins.Copy) else "RUN --mount from"
        if name == begin.stage:
            message = f"{what}={name} names the stage it is in"
        else:
            message = f"{what}={name}: no earlier stage is named {name!r}"
        hint = f"stages before this one: {', '.join(earlier)}" if earlier else None
        errors.append(_error(i, token, message, hint))
    return needs


def stage_reads(body: Sequence[ins.Instruction]) -> list[tuple[ins.Located, str, str]]:
    """(instruction, stage name, the token naming it) for each COPY --from and each RUN
    --mount from=: the stages a stage reads."""
    found: list[tuple[ins.Located, str, str]] = []
    for i in body:
        if isinstance(i, ins.Copy) and i.from_stage is not None:
            found.append((i, i.from_stage, f"--from={i.from_stage}"))
        elif isinstance(i, ins.Run):
            found += [(i, m.from_stage, f"from={m.from_stage}") for m in i.mounts
                      if m.from_stage is not None]
    return found


def _target(drafts: list[_Draft], target: str | None, errors: list[AcbuildError]) -> _Draft | None:
    if not drafts:
        return None
    if target is None:
        return drafts[-1]
    found = next((d for d in drafts if d.begin.stage == target), None)
    if found is None:
        named = [d.begin.stage for d in drafts if d.begin.stage is not None]
        hint = (
            f"stages: {', '.join(named)}" if named else "name stages with 'BEGIN <base> AS <name>'"
        )
        errors.append(AcfileError(f"unknown target stage {target!r}", hint=hint))
    return found


def _needed(drafts: list[_Draft], chosen: _Draft) -> set[int]:
    needed: set[int] = set()
    todo = [chosen.index]
    while todo:
        index = todo.pop()
        if index not in needed:
            needed.add(index)
            todo.extend(drafts[index].needs)
    return needed


def _number(drafts: list[_Draft]) -> tuple[Stage, ...]:
    total = sum(1 + len(d.body) for d in drafts)
    stages = []
    number = 0
    for d in drafts:
        steps = []
        for instruction in (d.begin, *d.body):
            number += 1
            steps.append(Step(number=number, total=total, instruction=instruction, stage=d.index))
        stages.append(
            Stage(index=d.index, name=d.begin.stage, base=d.base, begin=d.begin, steps=tuple(steps))
        )
    return tuple(stages)


# ---- checks -----------------------------------------------------------------------------------


def _at(i: ins.Located, token: str | None, after: str | None = None) -> Span:
    """The span of ``token`` in the instruction's line (after the word ``after`` when given),
    else the keyword's span."""
    span, line = i.span, i.span.source_line
    if not token or line is None:
        return span
    start = max(span.column - 1, 0) + len(ins.keyword(i))
    if after is not None and (previous := _at(i, after)) is not span:
        start = previous.column - 1 + previous.length
    # A whole word first ("b" should not hit the b in "--from=build"), then any occurrence.
    word = re.compile(r"(?<![^\s'\"=,])" + re.escape(token) + r"(?![^\s'\"=,:])")
    found = word.search(line, start) or word.search(line)
    index = found.start() if found else line.find(token, start)
    return span if index < 0 else span.with_column(index + 1, len(token))


def _error(
    i: ins.Located,
    token: str | None,
    message: str,
    hint: str | None = None,
    after: str | None = None,
) -> AcfileError:
    return AcfileError(message, span=_at(i, token, after), hint=hint)


def _problems(i: ins.Located, found: Sequence[tuple[str | None, str | None]]) -> list[AcbuildError]:
    """Errors for the (token, problem) pairs that have a problem."""
    return [_error(i, token, problem) for token, problem in found if problem is not None]


def _check(i: ins.Instruction) -> list[AcbuildError]:
    match i:
        case ins.Name(name=name):
            return _check_name(i, name)
        case ins.Label(pairs=pairs):
            return _problems(i, [(k, _label_problem(k, v)) for k, v in pairs])
        case ins.Annotation(pairs=pairs):
            return _problems(i, [(k, appc.annotation_problem(k, v)) for k, v in pairs])
        case ins.Env(pairs=pairs):
            return _problems(i, [(k, appc.env_name_problem(k)) for k, _ in pairs])
        case ins.Copy():
            return _check_copy(i)
        case ins.Run():
            return _check_run(i)
        case ins.Exec(argv=argv) | ins.EventHandler(argv=argv) if not all(argv):
            return [_error(i, None, f"{ins.keyword(i)} arguments must not be empty strings")]
        case ins.User(user=value) | ins.Group(group=value) if not value:
            return [_error(i, None, f"{ins.keyword(i)} must not be empty")]
        case ins.SupplementaryGids(gids=gids):
            bad = [g for g in gids if not 0 <= g < 2**32]
            return _problems(i, [(str(g), f"group ID {g} is out of range") for g in bad])
        case ins.Workdir(path=path):
            return _problems(i, [(path, appc.absolute_path_problem("WORKDIR", path))])
        case ins.Port() | ins.Mount() | ins.Isolator() | ins.EventHandler():
            return _check_app_item(i)
        case ins.Dependency():
            return _check_dependency(i)
        case ins.PathWhitelist(paths=paths):
            return _problems(
                i, [(p, appc.absolute_path_problem("PATH-WHITELIST entry", p)) for p in paths]
            )
        case ins.Sign(key=key) if not key:
            return [_error(i, None, "SIGN needs a key")]
        case _:
            return []


def _label_problem(name: str, value: str) -> str | None:
    if problem := appc.label_name_problem(name):
        return problem
    if name == "version" and not value:
        return "label 'version' must not be empty"
    return None


def _check_name(i: ins.Name, name: str) -> list[AcbuildError]:
    if appc.is_ac_identifier(name):
        return []
    message = f"image name {name!r} is not an ACIdentifier"
    fixed = re.sub(r"[^a-z0-9]*([-._~/])[^a-z0-9]*|[^a-z0-9]+", _separator, name.lower())
    fixed = fixed.strip("-._~/")
    hint = f"{appc.AC_IDENTIFIER_RULE}, e.g. 'NAME {fixed or 'example.com/app'}'"
    return [_error(i, name, message, hint)]


def _separator(m: re.Match[str]) -> str:
    return m.group(1) or "-"


def _check_copy(i: ins.Copy) -> list[AcbuildError]:
    found = [(i.dest, appc.absolute_path_problem("COPY destination", i.dest))]
    if i.chown is not None and not CHOWN.fullmatch(i.chown):
        found.append((i.chown, f"--chown={i.chown} is not written as user[:group]"))
    if i.mode is not None and not 0 <= i.mode <= 0o7777:
        found.append(("--mode", f"--mode={i.mode:o} is not a permission mode (0 to 7777)"))
    return _problems(i, found)


def _check_run(i: ins.Run) -> list[AcbuildError]:
    found: list[tuple[str | None, str | None]] = [(k, appc.env_name_problem(k)) for k, _ in i.env]
    if i.workdir is not None:
        found.append((i.workdir, appc.absolute_path_problem("RUN --workdir", i.workdir)))
    if i.timeout is not None and i.timeout <= 0:
        found.append(("--timeout", "RUN --timeout must be longer than zero"))
    if i.pids is not None and i.pids < 0:
        found.append(("--pids", "RUN --pids must be a number of processes, or max"))
    if i.memory is not None and 0 < i.memory < MIN_RUN_MEMORY:
        found.append(("--memory", "RUN --memory must be at least 32M (or max)"))
    if not i.argv:
        found.append((None, "RUN needs a command"))
    return _problems(i, found)


def _check_app_item(
    i: ins.Port | ins.Mount | ins.Isolator | ins.EventHandler,
) -> list[AcbuildError]:
    found: list[tuple[str | None, str | None]]
    match i:
        case ins.Port():
            found = [
                (i.name, appc.ac_name_problem("port name", i.name)),
                (i.protocol or None, None if i.protocol else "PORT needs a protocol"),
            ]
            if problem := appc.port_problem(i.port, i.count):
                return [*_problems(i, found), _error(i, str(i.port), problem, after=i.protocol)]
        case ins.Mount():
            found = [(i.name, appc.ac_name_problem("mount point name", i.name))]
            if problem := appc.absolute_path_problem("mount point path", i.path):
                return [*_problems(i, found), _error(i, i.path, problem, after=i.name)]
        case ins.Isolator():
            token = i.name if i.name not in appc.KNOWN_ISOLATORS else None
            problem = appc.isolator_value_problem(i.name, i.value_json)
            hint = None
            if token is not None:
                hint = "known isolators: " + ", ".join(sorted(appc.KNOWN_ISOLATORS))
            return [_error(i, token, problem, hint)] if problem else []
        case ins.EventHandler():
            found = [
                (i.event, appc.event_problem(i.event)),
                (None, None if i.argv else "EVENT-HANDLER needs a command"),
            ]
    return _problems(i, found)


def _check_dependency(i: ins.Dependency) -> list[AcbuildError]:
    found: list[tuple[str | None, str | None]] = [
        (i.image_name, appc.ac_identifier_problem("dependency name", i.image_name))
    ]
    seen: set[str] = set()
    for key, _ in i.labels:
        found.append((key, appc.label_name_problem(key)))
        if key in seen:
            found.append((key, f"dependency label {key!r} is given twice"))
        seen.add(key)
    if i.image_id is not None:
        # the reference takes any sha512-VALUE; in an Acfile one no image can match is a typo
        found.append((i.image_id, appc.image_id_problem(i.image_id)
                      or appc.image_id_warning(i.image_id)))
    if i.size is not None and i.size < 0:
        found.append((str(i.size), "dependency size must not be negative"))
    return _problems(i, found)


# Isolator pairs the spec forbids in one app (spec/ace.md); reported at the later line.
_EXCLUSIVE = (
    ("os/linux/seccomp-retain-set", "os/linux/seccomp-remove-set"),
    ("os/linux/capabilities-retain-set", "os/linux/capabilities-remove-set"),
)


def _repeats(body: Sequence[ins.Instruction]) -> list[AcbuildError]:
    """A second ISOLATOR, MOUNT or EVENT-HANDLER of one name would silently replace the
    first: an error at the second line. ENV too, unless a RUN between them saw the first."""
    errors: list[AcbuildError] = []
    first: dict[tuple[str, str], int] = {}
    for i in body:
        if isinstance(i, ins.Run):
            first = {k: line for k, line in first.items() if k[0] != "ENV"}
        match i:
            case ins.Isolator() | ins.Mount():
                keys = [(i.name, i.name)]
            case ins.EventHandler():
                keys = [(i.event, i.event)]
            case ins.Env(pairs=pairs):
                keys = [(k, k) for k, _ in pairs]
            case _:
                continue
        word = ins.keyword(i)
        for name, token in keys:
            line = first.setdefault((word, name), i.span.line)
            if line != i.span.line or sum(1 for n, _ in keys if n == name) > 1:
                errors.append(_error(
                    i, token, f"{word} {name!r} is already set on line {line}",
                    hint=f"keep one {word} {name} line: this one would replace line {line}'s"))
                break
        if isinstance(i, ins.Isolator):
            for pair in _EXCLUSIVE:
                other = pair[1] if i.name == pair[0] else pair[0] if i.name == pair[1] else None
                if other is not None and (word, other) in first:
                    errors.append(_error(
                        i, i.name, f"ISOLATOR {i.name} cannot be used with {other} "
                        f"(line {first[(word, other)]})",
                        hint="the spec allows one of the two in an app"))
    return errors


def _check_stage(draft: _Draft) -> list[AcbuildError]:
    """Checks about a stage as a whole: repeated PORT, ISOLATOR, MOUNT, EVENT-HANDLER and
    ENV names, isolators that exclude each other, the final os/arch pair."""
    errors: list[AcbuildError] = _repeats(draft.body)
    ports: dict[str, int] = {}
    where: dict[str, tuple[ins.Label, str]] = {}
    for i in draft.body:
        if isinstance(i, ins.Port):
            if i.name in ports:
                message = f"port {i.name!r} is already defined on line {ports[i.name]}"
                errors.append(_error(i, i.name, message))
            ports.setdefault(i.name, i.span.line)
        elif isinstance(i, ins.Label):
            where.update((k, (i, v)) for k, v in i.pairs if k in ("os", "arch"))
    os_name = where["os"][1] if "os" in where else None
    if os_name is None and isinstance(draft.base, Scratch):
        os_name = host_os_arch()[0]  # what manifest_edit.finish will add
    elif os_name is None:
        return errors  # the base image decides; the final manifest is checked after the build
    problem = appc.os_arch_problem(os_name, where["arch"][1] if "arch" in where else None)
    if problem is not None:
        key = "os" if problem.startswith("bad os") else "arch"
        label, value = where[key]
        errors.append(_error(label, f"{key}={value}", problem))
    return errors
