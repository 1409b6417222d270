"""Shared set-up for every hfgen test: an offline, telemetry-free environment and a guard against network access.

The environment is set at import time, before any test module imports huggingface_hub, gradio or transformers.
The network guard patches `socket` in this process only: subprocesses (the CLI and `accelerate launch` tests) are
not covered by it, only by the environment variables they inherit.
"""

import atexit
import ipaddress
import os
import shutil
import socket
import tempfile
import textwrap
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="hfgen-tests-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ.update(
    {
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # else `datasets.load_dataset("imagefolder")` pings s3.amazonaws.com
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": _HF_HOME,
        "TOKENIZERS_PARALLELISM": "false",
        "DO_NOT_TRACK": "1",
    }
)

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# The models under test are tiny: extra threads only add overhead, and on a busy machine OpenMP's spinning threads
# make a 0.5 s test take 20 s.
torch.set_num_threads(1)


# ----- network guard ------------------------------------------------------------------------------------------------
class NetworkAccessError(RuntimeError):
    """A test tried to reach a non-loopback address."""


_attempts: list[str] = []  # every refused host since the current test started


def _is_loopback(host) -> bool:
    if host is None:  # getaddrinfo(None, ...) resolves to the local machine
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other host name
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _refuse(host) -> None:
    _attempts.append(str(host))
    raise NetworkAccessError(f"Tests must not use the network: attempted to reach {host!r}.")


def _check_address(sock: socket.socket, address) -> None:
    family = sock.family
    if hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
        return
    if family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback(host):
            _refuse(host)
        return
    _refuse(f"{address!r} (socket family {family!r})")


@pytest.fixture(scope="session", autouse=True)
def _network_guard():
    """Installed for the whole session, so that session- and module-scoped fixtures are covered too."""
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(self, address):
        _check_address(self, address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _check_address(self, address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            _refuse(host)
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        patch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield


@pytest.fixture(autouse=True)
def _fail_on_network_access(_network_guard):
    """Fails the test even when library code swallowed the `NetworkAccessError` (offline fallbacks, retries)."""
    _attempts.clear()
    yield
    if _attempts:
        hosts = sorted(set(_attempts))
        _attempts.clear()
        pytest.fail(f"The test tried to reach the network: {hosts}", pytrace=False)


# ----- shared fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def digit_captions() -> list[str]:
    from hfgen.data import make_digits_dataset

    return sorted(set(make_digits_dataset()["text"]))


def make_tiny_text_components(captions: list[str]):
    """(tokenizer, text_encoder): a word tokenizer over `captions` (max_length 8) and a seeded CLIP text encoder with
    hidden size 32, 1 layer and 2 heads."""
    from hfgen.text import build_clip_text_encoder, build_word_tokenizer

    tokenizer = build_word_tokenizer(captions, max_length=8)
    torch.manual_seed(0)
    text_encoder = build_clip_text_encoder(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    return tokenizer, text_encoder.eval()


@pytest.fixture
def tiny_text_components(digit_captions):
    """[`make_tiny_text_components`] over the digits' captions. Fresh for every test, so tests may modify them."""
    return make_tiny_text_components(digit_captions)


# ----- a local Hub (tests/hub_server.py) ----------------------------------------------------------------------------
HUB_TOKEN = "hf_local_test"
HUB_USER = "tester"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


# The first lines of a test subprocess's script: any connection off the loopback fails there too.
LOOPBACK_ONLY_SCRIPT = textwrap.dedent(
    f"""
    import socket as _socket

    _connect = _socket.socket.connect

    def _loopback_only(sock, address):
        if isinstance(address, tuple) and address[0] not in {set(LOOPBACK_HOSTS)!r}:
            raise OSError(f"unexpected network access: {{address}}")
        return _connect(sock, address)

    _socket.socket.connect = _loopback_only
    """
)


def hub_subprocess_env(hub, hf_home) -> dict[str, str]:
    """The environment of a test subprocess that talks to the local Hub `hub`: this process's, without its HF_*
    settings, plus the server's URL and token, `hf_home` (caches and diffusers' remote code modules), and one OpenMP
    thread, as here (conftest.py), so that float results cannot differ by reduction order."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING", "DIFFUSERS_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(hf_home),
        HF_TOKEN=HUB_TOKEN,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A LocalHub for one test module, with huggingface_hub (already imported) pointed at it and a fresh cache.
    `HUB_TOKEN` may write to the `HUB_USER` namespace and is sent with every request (as `HF_TOKEN`).

    Any connection that is not to the loopback interface fails, so nothing can reach the real Hub.
    """
    from hub_server import serving

    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK_HOSTS:
            raise AssertionError(f"unexpected network access: {address}")
        return real_connect(sock, address)

    hf_home = tmp_path_factory.mktemp("hf_home")
    with serving(hf_home, {HUB_TOKEN: HUB_USER}) as server, pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", loopback_only)
        yield server


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty Hub cache for one test, so loads really download from the server."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
