"""The operator console in a real headless Chromium (Debian's, driven by Playwright), against
a real origin on loopback: sign in with a wrong then the right token, search the apps, open
one, promote, roll out, roll back (then check the signed ref the origin serves), see a
refusal, read a channel's history, compare two versions, decode the QR codes it shows and
downloads with zbarimg, and use it by keyboard at a phone's width.

Chromium, a font and zbar-tools are installed by tests/sysdeps.py when missing.  Set
CONSOLE_SCREENSHOT=PATH to also keep a picture of it after the rollout (docs/console.png is
made so: ``CONSOLE_SCREENSHOT=docs/console.png pytest tests/test_console_browser.py``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from common.manifest import Ref, open_ref
from common.signing import PublicKey
from tests.conftest import TOKEN, auth, http, publish, set_channel, tar_gz_of
from tests.console_support import ADDED, CHANGED, Demo, decode_qr, publish_demo
from tests.procs import Service, origin_service
from tests.sysdeps import BROWSER, ZBAR, require

QR_URL = "https://m.example.test/open/{app}?channel={channel}&version={version}"
THIRD = "1.2.0"
OTHERS = ("alpha", "alpine", "zeta")  # more apps for the list and its search
pytestmark = pytest.mark.timeout(900)  # a fresh machine installs chromium first (tests/sysdeps.py)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Demo, PublicKey]]:
    tmp = tmp_path_factory.mktemp("console")
    svc = origin_service(tmp, TOKEN, "--qr-url", QR_URL)
    svc.start()
    try:
        demo = publish_demo(svc.url, tmp, "demo", "1.0.0", "1.1.0", THIRD)
        small = tmp / "small"
        small.mkdir()
        (small / "app.js").write_text("App({})\n")
        for app in OTHERS:
            assert publish(svc.url, app, "1.0.0", tar_gz_of(small)).status == 201
        for channel in ("release", "beta"):
            assert set_channel(svc.url, "demo", channel, {"version": demo.old}).status == 200
        yield svc, demo, PublicKey.load(tmp / "keys" / "public.key")
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium, _font = require(*BROWSER)
    require(ZBAR)
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=chromium)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


def served_ref(svc: Service, key: PublicKey, channel: str) -> Ref:
    """The ref the origin serves now, its signature verified with the project's own code."""
    r = http("GET", f"{svc.url}/v1/apps/demo/channels/{channel}")
    assert r.status == 200, r.body
    ref = open_ref(r.body, [key])
    ref.check_fresh(int(time.time()), None)
    return ref


def sign_in(page: Page, url: str, token: str = TOKEN) -> None:
    page.goto(f"{url}/console/")
    page.get_by_label("Operator token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def serial_in(text: str) -> int:
    m = re.search(r"serial (\d+)", text)
    assert m, text
    return int(m.group(1))


def confirm(page: Page, button: Locator, answer: str = "Confirm") -> str:
    """Click an action's button, check that a dialog asks first, answer it; the dialog's text."""
    button.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    asked = str(dialog.inner_text())
    dialog.get_by_role("button", name=answer).click()
    expect(dialog).to_be_hidden()
    return asked


def test_a_wrong_token_shows_an_error_and_no_data_the_right_one_the_apps(
    browser: Browser, console: tuple[Service, Demo, PublicKey]
) -> None:
    svc, _demo, _key = console
    page = browser.new_context().new_page()
    asked: list[tuple[str, str | None]] = []
    page.on("request", lambda r: asked.append((r.url, r.headers.get("authorization"))))
    page.goto(f"{svc.url}/console/")
    field = page.get_by_label("Operator token")
    assert field.get_attribute("type") == "password"
    field.fill("not-the-token")
    field.press("Enter")
    expect(page.get_by_role("alert").filter(has_text="Wrong token")).to_be_visible()
    expect(page.locator("#workspace")).to_be_hidden()
    assert page.locator("#app-list li").count() == 0
    assert page.evaluate("sessionStorage.length") == 0
    data = [u for u, _a in asked if "/v1/" in u and not u.endswith("/v1/token")]
    assert data == []  # the wrong token fetched nothing but its own refusal

    field.fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    apps = page.locator("#app-list")
    for name in ("demo", *OTHERS):
        expect(apps.get_by_role("button", name=name, exact=True)).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('minicdn.console.token')") == TOKEN
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    assert page.context.cookies() == []
    listing = [a for u, a in asked if "/v1/apps?" in u]
    assert listing and set(listing) == {f"Bearer {TOKEN}"}

    page.get_by_label("Search apps").fill("alp")
    expect(apps.get_by_role("button")).to_have_count(2)
    expect(apps.get_by_role("button", name="alpha")).to_be_visible()
    expect(apps.get_by_role("button", name="alpine")).to_be_visible()
    page.get_by_label("Search apps").fill("nothing-like-this")
    expect(page.get_by_text("No app id starts with")).to_be_visible()
    assert [u for u, _a in asked if "prefix=nothing-like-this" in u]  # searched on the server

    page.reload()  # the tab keeps the token ...
    expect(apps.get_by_role("button", name="demo", exact=True)).to_be_visible()
    other = page.context.new_page()  # ... another tab does not
    other.goto(f"{svc.url}/console/")
    expect(other.get_by_label("Operator token")).to_be_visible()
    expect(other.locator("#workspace")).to_be_hidden()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Operator token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.context.close()


def test_promote_rollout_and_roll_back_move_the_signed_ref(
    browser: Browser, console: tuple[Service, Demo, PublicKey], tmp_path: Path
) -> None:
    svc, demo, key = console
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    sign_in(page, svc.url)
    page.locator("#app-list").get_by_role("button", name="demo", exact=True).click()
    release = page.get_by_role("article", name="Channel release")
    expect(release).to_contain_text(f"Version{demo.old}")
    start = served_ref(svc, key, "release")
    status = page.locator("#action-result")

    # Promote, cancelled first: nothing moves
    page.get_by_label("Version to promote").select_option(demo.new)
    page.get_by_label("Channel to promote to").fill("release")
    asked = confirm(page, page.get_by_role("button", name="Promote"), answer="Cancel")
    assert f"Promote demo {demo.new} to channel release?" in asked
    expect(status).to_contain_text("Cancelled")
    assert served_ref(svc, key, "release").serial == start.serial

    confirm(page, page.get_by_role("button", name="Promote"))
    expect(status).to_contain_text("Promoted")
    promoted = serial_in(status.inner_text())
    ref = served_ref(svc, key, "release")
    assert (ref.version, ref.serial, ref.rollout) == (demo.new, promoted, None)
    assert promoted == start.serial + 1
    expect(release).to_contain_text(f"Serial{promoted}")

    # Rollout of a third version to 25% on top of what release serves
    page.get_by_label("Channel to roll out on").select_option("release")
    page.get_by_label("Version to roll out").select_option(THIRD)
    page.get_by_label("Percent of users").fill("25")
    asked = confirm(page, page.get_by_role("button", name="Rollout"))
    assert f"Rollout demo {THIRD} to 25% of channel release" in asked
    expect(status).to_contain_text("Rollout")
    rolled = serial_in(status.inner_text())
    ref = served_ref(svc, key, "release")
    assert ref.version == demo.new and ref.serial == rolled == promoted + 1
    assert ref.rollout is not None and (ref.rollout.version, ref.rollout.percent) == (THIRD, 25)
    expect(release).to_contain_text(f"{THIRD} to 25%")
    if os.environ.get("CONSOLE_SCREENSHOT"):  # the picture of docs/operations.md and the README
        page.screenshot(
            path=os.environ["CONSOLE_SCREENSHOT"],
            full_page=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": 1100},
        )

    # Roll back: to the version before in the channel's history, rollout gone
    confirm(page, page.get_by_role("button", name="Roll back release"))
    expect(status).to_contain_text("Rolled back")
    back = serial_in(status.inner_text())
    ref = served_ref(svc, key, "release")
    assert (ref.version, ref.serial, ref.rollout) == (demo.old, back, None)
    assert back == rolled + 1
    assert f"from {demo.new} to {demo.old}" in status.inner_text()

    # Refusals: the server's own message, and nothing moves
    beta = served_ref(svc, key, "beta")
    confirm(page, page.get_by_role("button", name="Roll back beta"))
    alert = page.locator("#action-error")
    expect(alert).to_contain_text(
        "Refused by the origin: conflict: channel beta of demo has no earlier version"
    )
    assert served_ref(svc, key, "beta").serial == beta.serial
    page.get_by_label("Channel to promote to").fill("Not-A-Channel")
    confirm(page, page.get_by_role("button", name="Promote"))
    expect(alert).to_contain_text("invalid channel 'Not-A-Channel'")
    assert served_ref(svc, key, "release").serial == back

    # The channel's history, newest first
    page.get_by_role("button", name="History of release").click()
    rows = page.locator("#history tbody tr")
    expect(rows.first).to_contain_text("rollback")
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(3)] == [
        str(back),
        str(rolled),
        str(promoted),
    ]
    assert [rows.nth(i).locator("td").nth(2).inner_text() for i in range(3)] == ["rollback", "rollout", "set"]

    # A version's packages and sizes, as the origin counts them
    info = http("GET", f"{svc.url}/v1/apps/demo/versions/{demo.new}", headers=auth()).json()
    assert isinstance(info, dict)
    row = page.locator(f'#versions tr[data-version="{demo.new}"]')
    expect(row.locator("data").first).to_have_attribute("value", str(info["raw_bytes"]))
    page.get_by_role("button", name=f"Packages of {demo.new}").click()
    packages = page.get_by_role("table", name=f"Packages of {demo.new}")
    expect(packages).to_be_visible()
    for pkg in info["packages"]:
        expect(packages.get_by_role("row").filter(has_text=pkg["name"])).to_have_count(1)
    expect(packages).to_contain_text("independent subpackage")

    # What the update costs, and which files it changes
    page.get_by_label("From version").select_option(demo.old)
    page.get_by_label("To version").select_option(demo.new)
    page.get_by_role("button", name="Compare").click()
    cost = http("GET", f"{svc.url}/v1/apps/demo/compare?from={demo.old}&to={demo.new}", headers=auth()).json()
    assert isinstance(cost, dict)
    result = page.locator("#compare-result")
    expect(result.locator("p data").first).to_have_attribute("value", str(cost["bytes"]))
    main = result.locator('tr[data-package="__APP__"]')
    expect(main).to_contain_text("changed")
    expect(main).to_contain_text(CHANGED)
    expect(main).to_contain_text(ADDED)

    shot = tmp_path / "console.png"
    page.get_by_role("button", name="History of release").click()
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    refusals = ("status of 409 (Conflict)", "status of 400 (Bad Request)")  # the two refused on purpose
    assert [e for e in errors if not e.endswith(refusals)] == []
    page.context.close()


def test_the_qr_codes_shown_and_downloaded_decode_to_the_deep_link(
    browser: Browser, console: tuple[Service, Demo, PublicKey], tmp_path: Path
) -> None:
    svc, demo, _key = console
    page = browser.new_context().new_page()
    sign_in(page, svc.url)
    page.locator("#app-list").get_by_role("button", name="demo", exact=True).click()
    beta = page.get_by_role("article", name="Channel beta")
    link = "https://m.example.test/open/demo?channel=beta"
    img = beta.get_by_role("img", name="QR code of demo channel beta")
    expect(img).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    shown = tmp_path / "shown.png"
    img.screenshot(path=str(shown))  # the SVG as the browser drew it
    assert decode_qr(shown) == link
    expect(beta.locator("figcaption")).to_have_text(link)

    with page.expect_download() as got:
        beta.get_by_role("link", name="Download PNG").click()
    assert got.value.suggested_filename == "demo-beta.png"
    png = tmp_path / "downloaded.png"
    got.value.save_as(str(png))
    assert decode_qr(png) == link
    with page.expect_download() as got:
        beta.get_by_role("link", name="Download SVG").click()
    assert got.value.suggested_filename == "demo-beta.svg"
    svg = tmp_path / "downloaded.svg"
    got.value.save_as(str(svg))
    assert svg.read_bytes().lstrip().startswith(b"<?xml")

    page.get_by_role("button", name=f"Packages of {demo.new}").click()
    vimg = page.get_by_role("img", name=f"QR code of demo version {demo.new}")
    expect(vimg).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=vimg.element_handle())
    vshot = tmp_path / "version.png"
    vimg.screenshot(path=str(vshot))
    assert decode_qr(vshot) == f"https://m.example.test/open/demo?version={demo.new}"
    page.context.close()


def test_the_console_works_by_keyboard_at_a_phones_width(
    browser: Browser, console: tuple[Service, Demo, PublicKey], tmp_path: Path
) -> None:
    svc, _demo, _key = console
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page = context.new_page()
    page.goto(f"{svc.url}/console/")
    assert page.evaluate("document.activeElement.id") == "token"  # focus starts on the token field
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("#app-list").get_by_role("button", name="demo", exact=True)).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "search"
    page.keyboard.type("dem")
    expect(page.locator("#app-list").get_by_role("button")).to_have_count(1)

    def tab_to(predicate: str, limit: int = 40) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(f"(() => {{ const e = document.activeElement; return {predicate}; }})()"):
                return
        raise AssertionError(f"Tab never reached an element where {predicate}")

    tab_to("e.textContent === 'demo'")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="demo", exact=True)).to_be_focused()
    # (until the app's answer is in, its forms have no version to offer, and a required
    # select that is empty keeps Promote from submitting)
    expect(page.get_by_label("Version to promote").locator("option")).to_have_count(3)
    expect(page.get_by_role("heading", name="demo", exact=True)).to_be_focused()
    tab_to("e.textContent === 'Promote'")
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    expect(page.get_by_role("dialog").get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(page.locator("#action-result")).to_contain_text("Cancelled")

    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, a[href]')]
             .filter(e => e.getClientRects().length > 0)
             .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label')
                            || e.textContent.trim()))
             .map(e => e.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == []
    # readable at this width: the page itself never scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot = tmp_path / "phone.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    context.close()
