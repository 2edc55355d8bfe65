"""The client's settings check themselves, and a Client opens its HTTP session only in
``__aenter__``, after the store and its state: no server needed."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest

from client.client import Client, ClientConfig
from common.errors import ConfigError, StoreError
from common.signing import PublicKey

KEY = PublicKey.from_hex("ab" * 32)


def config(store: Path, **kw: object) -> ClientConfig:
    base: dict[str, object] = {"edges": ("http://127.0.0.1:9",), "public_keys": (KEY,), "store_dir": store}
    return ClientConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "names"),
    [
        ("edges", (), "--edge"),
        ("public_keys", (), "--public-key"),
        ("store_size", -1, "--store-size"),
        ("timeout", -1.0, "--timeout"),
        ("retry_for", -0.5, "--retry-for"),
        ("cooldown", -1.0, "cooldown"),
        ("batch_size", 0, "batch_size"),  # would loop forever taking empty batches
        ("batch_size", 1025, "batch_size"),  # more ids than an edge accepts in one batch
        ("batches_in_flight", 0, "batches_in_flight"),  # would download nothing
        ("plan", "fastest", "--plan"),
    ],
)
def test_config_refuses_what_can_never_work_naming_the_flag(
    tmp_path: Path, field: str, value: object, names: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, **{field: value})
    assert err.value.message.startswith(f"{names}: "), err.value.message


def test_config_accepts_the_bounds(tmp_path: Path) -> None:
    c = config(tmp_path, store_size=0, timeout=0.0, retry_for=0.0, batch_size=1024, batches_in_flight=1)
    assert c.batch_size == 1024


def _unclosed_sessions(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "Unclosed client session" in str(w.message)]


async def test_a_client_opens_no_session_until_entered(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = Client(config(tmp_path / "store"))
        del client
        gc.collect()
    assert _unclosed_sessions(caught) == []
    assert not (tmp_path / "store").exists()  # nor any file: that is __aenter__'s work, in a thread


@pytest.mark.parametrize("case", ["corrupt-state", "store-is-a-file"])
async def test_a_store_that_cannot_be_opened_leaves_no_session_open(tmp_path: Path, case: str) -> None:
    store = tmp_path / "store"
    if case == "corrupt-state":
        store.mkdir()
        (store / "state.json").write_text("{bad")
        expected: type[Exception] = StoreError
    else:
        store.write_text("a file, not a directory")
        expected = OSError  # the CLI shows it as a `store` error (exit 7): tests/test_client.py
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(expected):
            async with Client(config(store)):
                pass
        gc.collect()
    assert _unclosed_sessions(caught) == []


async def test_a_client_is_entered_before_use(tmp_path: Path) -> None:
    client = Client(config(tmp_path / "store"))
    with pytest.raises(RuntimeError, match="async with"):
        await client.install("demo", tmp_path / "app")
    async with client:
        assert client.state.installs() == [] and not client.session.closed
    assert client.session.closed
