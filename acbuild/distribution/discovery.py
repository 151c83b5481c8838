"""Fetch: AppC meta discovery — from an image name and labels to ACI, signature and key URLs.

GET ``https://NAME?ac-discovery=1`` (follow redirects), read the ``ac-discovery`` and
``ac-discovery-pubkeys`` meta tags, and on a 4xx or no match try each parent path of the name.
"""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from acbuild.acfile.parse_words import split_image_reference
from acbuild.distribution.tls import tls_context, untrusted
from acbuild.errors import AcfileError, FetchError
from acbuild.image.hostarch import host_os_arch
from acbuild.image.manifest_rules import is_ac_identifier

TIMEOUT = 30.0
MAX_PAGE = 1 << 20  # a discovery page is a few lines of HTML; refuse to read a novel
_UNRESOLVED = re.compile(r"\{[^{}]*\}")
_LABEL_NAME = re.compile(r"^[a-z0-9]+([-._~/][a-z0-9]+)*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    """``name[:version][,label=value…]`` as a user writes it."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def __str__(self) -> str:
        return ",".join([self.name, *(f"{k}={v}" for k, v in self.labels)])


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpOptions:
    insecure: bool = False
    port: int | None = None
    ca_file: Path | None = None
    timeout: float = TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    aci: str
    asc: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Discovery:
    ref: ImageRef
    page: str  # the URL whose meta tags matched
    endpoints: tuple[Endpoint, ...]
    keys: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.ref.name,
            "labels": dict(self.ref.labels),
            "page": self.page,
            "aciEndpoints": [{"aci": e.aci, "asc": e.asc} for e in self.endpoints],
            "publicKeys": list(self.keys),
        }


def parse_ref(unsafe_text: str) -> ImageRef:
    """Parse ``example.com/app:1.0,os=linux``; ``:version`` is the ``version`` label."""
    try:
        name, labels = split_image_reference(unsafe_text.strip())
    except AcfileError as e:  # the Acfile's splitter; here the words come from the command line
        raise FetchError(e.message) from None
    for key, value in labels:
        if not _LABEL_NAME.match(key) or key == "name":
            raise FetchError(
                f"invalid label {key + '=' + value!r} in {unsafe_text!r}: expected name=value"
            )
    if not is_ac_identifier(name):
        raise FetchError(f"invalid image name {name!r}: expected a name such as example.com/app")
    return ImageRef(name=name, labels=labels)


def template_values(ref: ImageRef) -> dict[str, str]:
    """Template variables: the name, every label, version ``latest`` and the host's os/arch
    unless given."""
    os_name, arch = host_os_arch()
    values = {"version": "latest", "os": os_name, "arch": arch}
    values.update(ref.labels)
    values["name"] = ref.name
    return values


def render_template(template: str, values: dict[str, str]) -> str | None:
    """The template with every ``{var}`` filled, or None if one is left unresolved."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return None if _UNRESOLVED.search(template) else template


class _MetaTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, str, str]] = []  # (meta name, prefix, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta":
            return
        a = dict(attrs)
        kind, content = a.get("name"), (a.get("content") or "").split()
        if kind in ("ac-discovery", "ac-discovery-pubkeys") and len(content) == 2:
            self.tags.append((kind, content[0], content[1]))


def meta_tags(html: str) -> tuple[tuple[str, str, str], ...]:
    """``(kind, prefix, url-or-template)`` for each discovery meta tag, in page order."""
    parser = _MetaTags()
    parser.feed(html)
    parser.close()
    return tuple(parser.tags)


def discovery_urls(name: str, options: HttpOptions) -> tuple[str, ...]:
    """The name itself, then each parent path, as discovery URLs."""
    scheme = "http" if options.insecure else "https"
    parts = name.split("/")
    host = parts[0] + (f":{options.port}" if options.port else "")
    return tuple(
        f"{scheme}://{'/'.join([host, *parts[1:n]])}?ac-discovery=1"
        for n in range(len(parts), 0, -1)
    )


def discover(ref: ImageRef, options: HttpOptions) -> Discovery:
    values = template_values(ref)
    tried: list[str] = []
    for url in discovery_urls(ref.name, options):
        try:
            page, final_url = _get_page(url, options)
        except _HttpStatus as e:
            if 400 <= e.status < 500:
                tried.append(f"{url}: HTTP {e.status}")
                continue
            raise FetchError(f"discovery of {ref.name} failed: {url}: HTTP {e.status}") from None
        found = _match(ref, values, meta_tags(page), final_url)
        if found is not None:
            return found
        tried.append(f"{url}: no matching ac-discovery tags")
    raise FetchError(f"discovery of {ref} found no image: " + "; ".join(tried),
                     hint="check the name and labels, or use --insecure/--port for a test server")


def _match(ref: ImageRef, values: dict[str, str], tags: tuple[tuple[str, str, str], ...],
           page: str) -> Discovery | None:
    endpoints: list[Endpoint] = []
    keys: list[str] = []
    for kind, prefix, target in tags:
        if not ref.name.startswith(prefix):  # the spec's rule: a plain string prefix
            continue
        if kind == "ac-discovery-pubkeys":
            keys.append(target)
            continue
        aci = render_template(target, {**values, "ext": "aci"})
        asc = render_template(target, {**values, "ext": "aci.asc"})
        if aci and asc:
            endpoints.append(Endpoint(aci=aci, asc=asc))
    if not endpoints:
        return None
    return Discovery(ref=ref, page=page, endpoints=tuple(endpoints),
                     keys=tuple(dict.fromkeys(keys)))


class _HttpStatus(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _get_page(url: str, options: HttpOptions) -> tuple[str, str]:
    try:
        with open_url(url, options) as response:
            data = response.read(MAX_PAGE + 1)
            final = response.geturl()
    except urllib.error.HTTPError as e:
        e.close()
        raise _HttpStatus(e.code) from None
    if len(data) > MAX_PAGE:
        raise FetchError(f"discovery page {url} is larger than {MAX_PAGE} bytes")
    return data.decode("utf-8", errors="replace"), final


class _RedirectPolicy(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from https down to plain http unless --insecure."""

    def __init__(self, insecure: bool) -> None:
        self.insecure = insecure

    def redirect_request(  # type: ignore[no-untyped-def] # urllib's own signature
        self, req, fp, code, msg, headers, newurl
    ):
        if not self.insecure and not newurl.lower().startswith("https://"):
            raise FetchError(f"{req.full_url} redirects to {newurl}, which is not https",
                             hint="use --insecure only for servers you control")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def open_url(url: str, options: HttpOptions) -> http.client.HTTPResponse:
    """GET ``url`` with a timeout; HTTPError for statuses, FetchError for everything else."""
    if not url.startswith("https://") and not (options.insecure and url.startswith("http://")):
        raise FetchError(f"refusing to fetch {url}: only https is allowed",
                         hint="use --insecure for plain http")
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=tls_context(options.ca_file)),
        _RedirectPolicy(options.insecure))
    request = urllib.request.Request(url, headers={"User-Agent": "acbuild-py"})
    try:
        return opener.open(request, timeout=options.timeout)  # type: ignore[no-any-return]
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLCertVerificationError):
            said, hint = untrusted(urllib.parse.urlsplit(url).hostname or "", reason)
            raise FetchError(f"cannot fetch {url}: {said}", hint=hint) from None
        raise FetchError(f"cannot fetch {url}: {reason}") from None
