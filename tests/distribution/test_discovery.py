"""Tests for acbuild.distribution.discovery against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import pytest

from acbuild.distribution.discovery import (
    HttpOptions,
    ImageRef,
    discover,
    discovery_urls,
    meta_tags,
    parse_ref,
    render_template,
    template_values,
)
from acbuild.errors import FetchError
from acbuild.image.hostarch import host_os_arch
from tests.support.httpserver import Server

pytest_plugins = ("tests.support.fetchhelp",)  # http_server


TEMPLATE = "http://127.0.0.1/{name}-{version}-{os}-{arch}.{ext}"


def page(*tags: tuple[str, str, str]) -> str:
    metas = "".join(f'<meta name="{k}" content="{p} {u}">\n' for k, p, u in tags)
    return f"<html><head>{metas}</head><body>hi</body></html>"


def opts(server: Server) -> HttpOptions:
    return HttpOptions(insecure=True, port=server.port, timeout=5)


def test_parse_ref() -> None:
    assert parse_ref("example.com/app:1.0,os=linux") == ImageRef(
        name="example.com/app", labels=(("version", "1.0"), ("os", "linux")))
    assert parse_ref("example.com/app").labels == ()
    assert str(parse_ref("a.b/c:1,arch=amd64")) == "a.b/c,version=1,arch=amd64"
    for bad, msg in [("Example.com", "invalid image name 'Example.com'"),
                     ("a.com/x,os", "invalid label 'os' in 'a.com/x,os': expected NAME=VALUE"),
                     ("a.com/x,Os=1", "invalid label 'Os=1' in 'a.com/x,Os=1': expected name="),
                     ("a.com/x:1,version=2", "label 'version' given more than once"),
                     ("a.com/x:", "empty version in 'a.com/x:'")]:
        with pytest.raises(FetchError) as e:
            parse_ref(bad)
        assert e.value.message.startswith(msg)


def test_template_values_and_render() -> None:
    os_name, arch = host_os_arch()
    values = template_values(ImageRef(name="a.com/x", labels=(("channel", "beta"),)))
    assert values == {"version": "latest", "os": os_name, "arch": arch, "channel": "beta",
                      "name": "a.com/x"}
    assert render_template("https://{name}/{channel}-{version}.{ext}", {**values, "ext": "aci"}) \
        == "https://a.com/x/beta-latest.aci"
    assert render_template("https://{name}/{missing}.aci", values) is None


def test_discovery_urls_walk_parents() -> None:
    assert discovery_urls("a.com/b/c", HttpOptions()) == (
        "https://a.com/b/c?ac-discovery=1", "https://a.com/b?ac-discovery=1",
        "https://a.com?ac-discovery=1")
    assert discovery_urls("localhost/app", HttpOptions(insecure=True, port=81)) == (
        "http://localhost:81/app?ac-discovery=1", "http://localhost:81?ac-discovery=1")


def test_meta_tags_parser() -> None:
    html = ('<meta name="ac-discovery" content="a.com https://a.com/{name}.{ext}">'
            '<META NAME="ac-discovery-pubkeys" CONTENT="a.com https://a.com/k.gpg">'
            '<meta name="description" content="x y"><meta name="ac-discovery" content="bad">')
    assert meta_tags(html) == (("ac-discovery", "a.com", "https://a.com/{name}.{ext}"),
                               ("ac-discovery-pubkeys", "a.com", "https://a.com/k.gpg"))


def test_discover_follows_redirects_and_fills_templates(http_server: Server) -> None:
    (http_server.root / "real.html").write_text(page(
        ("ac-discovery", "127.0.0.1/app", "http://x/{name}/{missing}.{ext}"),
        ("ac-discovery", "127.0.0.1/other", "http://x/other.{ext}"),
        ("ac-discovery", "127.0.0.1/app", TEMPLATE),
        ("ac-discovery-pubkeys", "127.0.0.1/app", "http://x/pubkeys.gpg"),
    ))
    http_server.behaviour.redirects["/app"] = "/real.html"
    result = discover(parse_ref("127.0.0.1/app:1.0,arch=arm64"), opts(http_server))
    os_name, _ = host_os_arch()
    assert [(e.aci, e.asc) for e in result.endpoints] == [(
        f"http://127.0.0.1/127.0.0.1/app-1.0-{os_name}-arm64.aci",
        f"http://127.0.0.1/127.0.0.1/app-1.0-{os_name}-arm64.aci.asc")]
    assert result.keys == ("http://x/pubkeys.gpg",)
    assert result.page == f"{http_server.url}/real.html"


def test_discover_retries_parent_on_404_and_no_match(http_server: Server) -> None:
    (http_server.root / "group").mkdir()
    (http_server.root / "group/index.html").write_text(page(
        ("ac-discovery", "127.0.0.1/other", TEMPLATE)))
    (http_server.root / "index.html").write_text(page(("ac-discovery", "127.0.0.1/", TEMPLATE)))
    result = discover(parse_ref("127.0.0.1/group/app:2"), opts(http_server))
    assert result.endpoints[0].aci.endswith("/127.0.0.1/group/app-2-" +
                                            "-".join(host_os_arch()) + ".aci")
    assert http_server.behaviour.requests == [
        "/group/app?ac-discovery=1", "/group?ac-discovery=1", "/group/?ac-discovery=1",
        "/?ac-discovery=1"]


def test_discover_nothing_found(http_server: Server) -> None:
    with pytest.raises(FetchError) as e:
        discover(parse_ref("127.0.0.1/app"), opts(http_server))
    base = f"http://127.0.0.1:{http_server.port}"
    assert e.value.message == (
        f"discovery of 127.0.0.1/app found no image: {base}/app?ac-discovery=1: HTTP 404; "
        f"{base}?ac-discovery=1: no matching ac-discovery tags")


def test_discover_server_error_is_fatal(http_server: Server) -> None:
    http_server.behaviour.statuses["/app"] = 500
    with pytest.raises(FetchError, match="HTTP 500"):
        discover(parse_ref("127.0.0.1/app"), opts(http_server))


def test_http_refused_without_insecure(http_server: Server) -> None:
    with pytest.raises(FetchError, match=r"cannot fetch https://127\.0\.0\.1"):
        discover(parse_ref("127.0.0.1/app"), HttpOptions(port=http_server.port, timeout=5))


def test_connection_refused() -> None:
    with pytest.raises(FetchError, match=r"cannot fetch http://127\.0\.0\.1:1/app"):
        discover(parse_ref("127.0.0.1/app"), HttpOptions(insecure=True, port=1, timeout=5))
