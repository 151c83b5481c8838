"""Manifest rules: every AppC rule an ImageManifest must keep, as the appc/spec Go reference
(actool) checks them, and the few stricter ones docs/conformance.md lists with the spec's words.

``problems()`` checks a whole manifest (validate, finalize, every reader); ``warnings()`` names
what the reference accepts but rkt or the spec text would not; the ``*_problem`` helpers check
one value each (the planner points them at Acfile tokens).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acbuild.image.manifest import App, ImageManifest, NameValue

# The spec version written into new manifests and offered as the example of a valid one.
AC_VERSION = "0.8.11"


# ---- rules: one value at a time (the planner points these at Acfile tokens) -------------------

OS_ARCH: dict[str, frozenset[str]] = {
    "linux": frozenset(
        {
            "amd64",
            "i386",
            "aarch64",
            "aarch64_be",
            "armv6l",
            "armv7l",
            "armv7b",
            "ppc64",
            "ppc64le",
            "s390x",
        }
    ),
    "freebsd": frozenset({"amd64", "i386", "arm"}),
    "darwin": frozenset({"x86_64", "i386"}),
}

_RESOURCES_DEFAULT_FALSE = frozenset({"resource/cpu", "resource/memory"})
_RESOURCES_DEFAULT_TRUE = frozenset(
    {"resource/block-bandwidth", "resource/block-iops", "resource/network-bandwidth"}
)
_CAPABILITY_SETS = frozenset(
    {"os/linux/capabilities-retain-set", "os/linux/capabilities-remove-set"}
)
_SECCOMP_SETS = frozenset({"os/linux/seccomp-retain-set", "os/linux/seccomp-remove-set"})
# The isolators the reference knows (appc/spec HEAD); an app with any other name is invalid
# ("invalid isolator"). Debian's actool 0.8.11 predates os/linux/apparmor-profile.
KNOWN_ISOLATORS: frozenset[str] = (
    _RESOURCES_DEFAULT_FALSE
    | _RESOURCES_DEFAULT_TRUE
    | _CAPABILITY_SETS
    | _SECCOMP_SETS
    | {
        "os/linux/no-new-privileges",
        "os/linux/oom-score-adj",
        "os/linux/cpu-shares",
        "os/linux/selinux-context",
        "os/linux/apparmor-profile",
        "os/unix/sysctl",
    }
)
# The reference allows these more than once in an app (multipleAllowed); every other isolator
# may appear once.
REPEATABLE_ISOLATORS: frozenset[str] = (
    _RESOURCES_DEFAULT_FALSE | _RESOURCES_DEFAULT_TRUE | _CAPABILITY_SETS
    | {"os/linux/no-new-privileges"}
)
EVENTS = ("pre-start", "post-stop")

# The reference's ACIdentifier rule: only these characters, and none of the separators at
# either end. spec/types.md's regex would refuse its own example "example.com/~user/app_v1".
_AC_IDENTIFIER = re.compile(r"(?![-._~/])[a-z0-9._~/-]+(?<![-._~/])")
_AC_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9.-]*")
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:Z|[+-](\d{2}):(\d{2}))"
)
# Kubernetes quantities as actool parses them: a decimal number with an SI or binary suffix
# or an exponent ("500m", "1Gi", "1.5", "1e3").
_QUANTITY = re.compile(
    r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?"
)
# Full image IDs have 128 hex digits; rkt prints (and accepts) 32-digit prefixes.
_IMAGE_ID = re.compile(r"sha512-[0-9a-f]{32,128}")
# What the reference's Hash accepts: "sha512-" and any value without another '-'.
_REFERENCE_IMAGE_ID = re.compile(r"sha512-[^-]+")

AC_IDENTIFIER_RULE = (
    "lower-case letters, digits, '-', '.', '_', '~' and '/', starting and ending with a letter "
    "or digit"
)
AC_NAME_RULE = "lower-case letters and digits, separated by single '-'"


def is_ac_identifier(s: object) -> bool:
    return isinstance(s, str) and _AC_IDENTIFIER.fullmatch(s) is not None


def is_ac_name(s: object) -> bool:
    return isinstance(s, str) and _AC_NAME.fullmatch(s) is not None


def ac_identifier_problem(what: str, s: str) -> str | None:
    if not s:
        return f"{what} must not be empty"
    if is_ac_identifier(s):
        return None
    return f"{what} {s!r} is not an ACIdentifier ({AC_IDENTIFIER_RULE})"


def ac_name_problem(what: str, s: str) -> str | None:
    if not s:
        return f"{what} must not be empty"
    if is_ac_name(s):
        return None
    return f"{what} {s!r} is not an ACName ({AC_NAME_RULE})"


def absolute_path_problem(what: str, path: str) -> str | None:
    if not path:
        return f"{what} must not be empty"
    if not path.startswith("/"):
        return f"{what} {path!r} must be an absolute path"
    return None


def version_problem(version: str) -> str | None:
    if not version:
        return "acVersion must be set"
    if not _SEMVER.fullmatch(version):
        return f"acVersion {version!r} is not a SemVer version such as {AC_VERSION!r}"
    if version == "0.0.0":  # the reference's "empty" version; 0.0.0-alpha is not empty
        return "acVersion must not be 0.0.0"
    return None


def label_name_problem(name: str) -> str | None:
    if name == "name":
        return "'name' cannot be a label: the image name is the manifest's name field"
    return ac_identifier_problem("label name", name)


def os_arch_problem(os_name: str | None, arch: str | None) -> str | None:
    """The os/arch label pair against the spec's whitelist. An arch without an os is valid
    (the reference checks arch only beside an os; the spec: it "is meaningful only if os is
    provided"); ``warnings()`` mentions it."""
    if os_name is None:
        return None
    archs = OS_ARCH.get(os_name)
    if archs is None:
        return f"bad os {os_name!r} (must be one of: {', '.join(sorted(OS_ARCH))})"
    if arch is not None and arch not in archs:
        return f"bad arch {arch!r} for {os_name} (must be one of: {', '.join(sorted(archs))})"
    return None


def env_name_problem(name: str) -> str | None:
    if _ENV_NAME.fullmatch(name):
        return None
    return (
        f"environment variable name {name!r} is not valid "
        "(a letter or '_', then letters, digits, '_', '.' or '-')"
    )


def port_problem(port: int, count: int) -> str | None:
    if not 1 <= port <= 65535:
        return f"port {port} is out of range (1-65535)"
    if count < 1:
        return f"port count {count} must be at least 1"
    if port + count > 65536:
        return f"port range {port}-{port + count - 1} ends beyond 65535"
    return None


def event_problem(event: str) -> str | None:
    if event in EVENTS:
        return None
    return f"event handler {event!r} is not one of: {', '.join(EVENTS)}"


def image_id_problem(image_id: str) -> str | None:
    """A dependency's imageID as the reference reads it: ``sha512-`` and a value."""
    if _REFERENCE_IMAGE_ID.fullmatch(image_id):
        return None
    return f"image ID {image_id!r} is not 'sha512-' followed by the image's hash"


def image_id_warning(image_id: str) -> str | None:
    """An imageID the reference takes but no image can match (``sha512-...``)."""
    if _IMAGE_ID.fullmatch(image_id) or image_id_problem(image_id):
        return None
    return (f"image ID {image_id!r} is not 'sha512-' followed by 32 to 128 lower-case hex "
            "digits: no image will match it")


def rfc3339_problem(what: str, value: str) -> str | None:
    m = _RFC3339.fullmatch(value)
    if m is not None:
        year, month, day, hour, minute, sec, oh, om = (int(g or 0) for g in m.groups())
        try:
            datetime.datetime(year, month, day, hour, minute, sec)
            datetime.timedelta(hours=oh, minutes=om)
        except ValueError:
            m = None
        else:
            if oh < 24 and om < 60:
                return None
    return f"{what} {value!r} is not an RFC 3339 date such as '2006-01-02T15:04:05Z'"


def url_problem(what: str, value: str) -> str | None:
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() in ("http", "https") and rest and not rest.startswith("/"):
        return None
    return f"{what} {value!r} is not an http or https URL"


def annotation_problem(name: str, value: str) -> str | None:
    """The name rule, and the value rule of the annotations the spec defines."""
    if problem := ac_identifier_problem("annotation name", name):
        return problem
    if name == "created":
        return rfc3339_problem("annotation 'created'", value)
    if name in ("homepage", "documentation"):
        return url_problem(f"annotation {name!r}", value)
    return None


def isolator_value_problem(name: str, value_json: str) -> str | None:
    """The value's shape for a known isolator, as far as actool 0.8.11 checks it."""
    if name not in KNOWN_ISOLATORS:
        return f"unknown isolator {name!r}"
    try:
        value = json.loads(value_json)
    except (ValueError, RecursionError):  # JSONDecodeError, and integers too long to read
        return f"isolator {name}: value is not valid JSON"
    if value is None:  # the reference dereferences the missing value and panics
        return f"isolator {name}: value is missing"
    problem = _isolator_value(name, value)
    return None if problem is None else f"isolator {name}: {problem}"


def _isolator_value(name: str, v: Any) -> str | None:
    if name in _RESOURCES_DEFAULT_FALSE | _RESOURCES_DEFAULT_TRUE:
        return _resource(name, v)
    if name in _CAPABILITY_SETS | _SECCOMP_SETS:
        return _syscall_or_capability_set(name, v)
    if name == "os/linux/no-new-privileges":
        return None if isinstance(v, bool) else "value must be true or false"
    if name in ("os/linux/oom-score-adj", "os/linux/cpu-shares"):
        low, high = (-1000, 1000) if name.endswith("adj") else (2, 262144)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            return f"value must be an integer from {low} to {high}"
        return None
    if name == "os/linux/selinux-context":
        return _selinux(v)
    if name == "os/linux/apparmor-profile":
        profile = v.get("profile") if isinstance(v, dict) else None
        if not isinstance(profile, str) or not profile:
            return 'value must be an object such as {"profile": "rkt-default"}'
        return None
    # os/unix/sysctl
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        return 'value must be an object of strings, e.g. {"net.ipv4.ip_forward": "1"}'
    return None


def _resource(name: str, v: Any) -> str | None:
    if not isinstance(v, dict):
        return 'value must be an object such as {"limit": "1G"}'
    for key in ("request", "limit"):
        q = v.get(key)
        if q is None or (isinstance(q, int | float) and not isinstance(q, bool)):
            continue  # the reference reads a JSON number as the quantity it spells
        if not isinstance(q, str) or not _QUANTITY.fullmatch(q.strip()):
            return f"{key} {q!r} is not a quantity such as '500m', '2' or '1Gi'"
    default = v.get("default", False)
    if not isinstance(default, bool):
        return "default must be true or false"
    if name in _RESOURCES_DEFAULT_TRUE:
        if not default:
            return 'needs "default": true'
        if v.get("request") is not None:
            return "takes no request, only a limit"
    elif default:
        return "default must be false"
    return None


def _syscall_or_capability_set(name: str, v: Any) -> str | None:
    if not isinstance(v, dict):
        return 'value must be an object such as {"set": ["CAP_NET_BIND_SERVICE"]}'
    entries = v.get("set")
    if not isinstance(entries, list) or not entries:
        return "set must be a non-empty list"
    if not all(isinstance(e, str) and e for e in entries):
        return "set must hold non-empty strings"
    errno = v.get("errno", "")
    if name in _SECCOMP_SETS and errno != "" and not re.fullmatch(r"E[A-Z0-9]*", str(errno)):
        return (f"errno {errno!r} must be 'E' and upper-case letters or digits, "
                "e.g. 'EPERM' or 'E2BIG'")
    return None


def _selinux(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "value must be an object with user, role, type and level"
    for key in ("user", "role", "type", "level"):
        part = v.get(key)
        if not isinstance(part, str) or not part or (key != "level" and ":" in part):
            return f"{key} {part!r} is not valid"
    return None


# ---- rules: the whole manifest ----------------------------------------------------------------


def _duplicates(what: str, names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    return [f"duplicate {what} {n!r}" for n in dups]


def _keep(*found: str | None) -> list[str]:
    return [p for p in found if p is not None]


def _labels_problems(labels: tuple[NameValue, ...], where: str = "") -> list[str]:
    out = [f"{where}{p}" for lb in labels if (p := label_name_problem(lb.name))]
    out += _duplicates(f"{where}label", (lb.name for lb in labels))
    values = {lb.name: lb.value for lb in labels}
    out += [f"{where}{p}" for p in _keep(os_arch_problem(values.get("os"), values.get("arch")))]
    return out


def isolator_set_problems(names: Iterable[str]) -> list[str]:
    """Isolators that may not stand together in one app: a repeat of one the reference allows
    once, seccomp retain- and remove-sets (spec/ace.md), capabilities retain- and remove-sets
    (spec/ace.md: "The retain set cannot be used in conjunction with the remove set")."""
    names = list(names)
    out = _duplicates("isolator", (n for n in names if n not in REPEATABLE_ISOLATORS))
    if set(names) >= _SECCOMP_SETS:
        out.append("isolators seccomp-retain-set and seccomp-remove-set exclude each other")
    if set(names) >= _CAPABILITY_SETS:
        out.append("isolators capabilities-retain-set and capabilities-remove-set exclude "
                   "each other")
    return out


def _app_problems(app: App) -> list[str]:
    out = _keep(
        None if app.user else "app user must not be empty",
        None if app.group else "app group must not be empty",
    )
    out += [f"supplementary GID {g} is negative" for g in app.supplementary_gids if g < 0]
    out += [p for e in app.event_handlers if (p := event_problem(e.name))]
    out += _duplicates("event handler", (e.name for e in app.event_handlers))
    if app.working_directory is not None:
        out += _keep(absolute_path_problem("working directory", app.working_directory))
    out += [p for e in app.environment if (p := env_name_problem(e.name))]
    out += _duplicates("environment variable", (e.name for e in app.environment))
    out += [p for i in app.isolators if (p := isolator_value_problem(i.name, i.value_json))]
    out += isolator_set_problems(i.name for i in app.isolators)
    for mp in app.mount_points:
        out += _keep(ac_name_problem("mount point name", mp.name))
        out += _keep(absolute_path_problem(f"mount point {mp.name!r} path", mp.path))
    out += _duplicates("mount point", (mp.name for mp in app.mount_points))
    for port in app.ports:  # not `p`: the walrus above binds `p` in this scope
        out += _keep(ac_name_problem("port name", port.name), port_problem(port.port, port.count))
        out += _keep(None if port.protocol else f"port {port.name!r} has no protocol")
    out += _duplicates("port", (port.name for port in app.ports))
    return out


def problems(m: ImageManifest) -> list[str]:
    """Every AppC rule the manifest breaks, one sentence each; ``[]`` when it is valid."""
    out = _keep(version_problem(m.ac_version), ac_identifier_problem("name", m.name))
    out += _labels_problems(m.labels)
    if m.app is not None:
        out += _app_problems(m.app)
    for d in m.dependencies:
        out += _keep(ac_identifier_problem("dependency name", d.image_name))
        out += _keep(None if d.image_id is None else image_id_problem(d.image_id))
        out += _labels_problems(d.labels, f"dependency {d.image_name!r}: ")
        out += _keep(None if d.size is None or d.size >= 0 else "dependency size is negative")
    out += [p for w in m.path_whitelist if (p := absolute_path_problem("pathWhitelist entry", w))]
    out += [p for a in m.annotations if (p := annotation_problem(a.name, a.value))]
    out += _duplicates("annotation", (a.name for a in m.annotations))
    return out


def warnings(m: ImageManifest) -> list[str]:
    """What the reference accepts but is likely a mistake; the image stays valid."""
    out: list[str] = []
    labels = {lb.name for lb in m.labels}
    if "arch" in labels and "os" not in labels:
        out.append("label 'arch' means nothing without an 'os' label (spec/aci.md)")
    for d in m.dependencies:
        out += _keep(None if d.image_id is None else image_id_warning(d.image_id))
    if m.app is not None:
        if any(not arg for arg in m.app.exec):
            out.append("app exec has an empty argument")
        out += [f"event handler {e.name!r} has no exec" for e in m.app.event_handlers
                if not e.exec]
        out += [f"app field {key!r} is not a spec field; Go readers take it as {known!r}"
                for key, _ in m.app.extra if (known := _case_twin(key, _APP_FIELDS))]
    out += [f"manifest field {key!r} is not a spec field; Go readers take it as {known!r}"
            for key, _ in m.extra if (known := _case_twin(key, _MANIFEST_FIELDS))]
    return out


_MANIFEST_FIELDS = ("acKind", "acVersion", "name", "labels", "app", "dependencies",
                    "pathWhitelist", "annotations")
_APP_FIELDS = ("exec", "user", "group", "supplementaryGIDs", "eventHandlers",
               "workingDirectory", "environment", "isolators", "mountPoints", "ports",
               "userAnnotations", "userLabels")


def _case_twin(key: str, fields: tuple[str, ...]) -> str | None:
    # Go's encoding/json matches keys case-insensitively; this model matches them exactly
    return next((f for f in fields if f.lower() == key.lower() and f != key), None)
