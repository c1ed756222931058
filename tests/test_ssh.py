"""Running on a board over ssh (issue 7, item 2), for real: an OpenSSH server the test starts
on 127.0.0.1 with its own host key and user key in a temporary folder. The "board" behind
it runs the host build natively, or a board build under the board's qemu-user command."""
import json
import os
from pathlib import Path
import shutil
import socket
import subprocess
import time

import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper
import onnxruntime as ort
import pytest

from conftest import board_file, require_board
import decoders
from moa_edge.errors import MoaEdgeError
from moa_edge.harness.build import build
from moa_edge.harness.runner import run
from moa_edge.harness.ssh import RemoteFolder, SshTarget
from moa_edge.pipeline import convert
from moa_edge.target import load_board

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """(user@127.0.0.1:port, an ssh_config with the user key and the server's host key)."""
    missing = [tool for tool in ("ssh", "scp", "ssh-keygen") if shutil.which(tool) is None]
    if missing or not os.access(SSHD, os.X_OK):
        message = f"OpenSSH is not installed here (missing {missing or [SSHD]}); run make setup as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: skipping is not allowed)")
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("sshd")
    os.chmod(folder, 0o700)
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port, user = _free_port(), os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                                            text=True).stdout.strip()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
        "Subsystem sftp internal-sftp\n")  # scp speaks SFTP since OpenSSH 9
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (folder / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {folder / 'user_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {folder / 'known_hosts'}\n  StrictHostKeyChecking yes\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=subprocess.PIPE)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if server.poll() is not None:
            pytest.fail(f"sshd did not start: {server.stderr.read().decode()}")
        time.sleep(0.05)
    yield f"{user}@127.0.0.1:{port}", str(folder / "ssh_config")
    server.terminate()
    server.wait(timeout=10)


def _model(path: Path) -> Path:
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Tanh", ["xw"], ["y"])], "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [5, 40])], [helper.make_tensor_value_info("y", T.FLOAT, [5, 24])],
        initializer=[numpy_helper.from_array(rng.standard_normal((40, 24)).astype(np.float32) / 6, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["host", "rpi4"])
def test_run_over_ssh_matches_onnxruntime(board_name, sshd, tmp_path):
    board = require_board(board_name)
    destination, config = sshd
    path = _model(tmp_path / "m.onnx")
    report = convert(path, tmp_path / "p")
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)}
    outputs, run_us = run(build(tmp_path / "p", board), board, report["io"], feeds,
                          ssh=SshTarget.parse(destination, config))
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(outputs["y"], want, rtol=1e-5, atol=1e-6)
    assert run_us > 0


def test_a_board_that_refuses_the_key_is_one_clear_error(sshd, tmp_path):
    """Another key than the authorised one: BatchMode gives up at once, no password prompt."""
    destination, config = sshd
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = Path(config).read_text().replace(str(Path(config).parent / "user_key"), str(tmp_path / "other"))
    (tmp_path / "config").write_text(other)
    with pytest.raises(MoaEdgeError, match="mktemp failed"):
        run(Path("/bin/true"), require_board("host"), [], {}, ssh=SshTarget.parse(destination, str(tmp_path / "config")))


def test_arguments_reach_the_board_word_for_word(sshd):
    """Each argv word arrives as one word, whatever its spaces and quotes: nothing is re-split."""
    destination, config = sshd
    words = ["a b", "it's", "$(echo no)", "*", ";", ""]
    out = SshTarget.parse(destination, config).check(["printf", "[%s]\\n", *words], "printf")
    assert out.splitlines() == [f"[{w}]" for w in words]


def test_local_paths_that_look_like_a_host_or_an_option_are_copied_as_files(sshd, tmp_path, monkeypatch):
    """scp reads a relative "a:b/f" as a host and "-oProxyCommand=..." as an option (a command run here)."""
    destination, config = sshd
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a:b").mkdir()
    (tmp_path / "a:b" / "f").write_text("one")
    (tmp_path / "-oProxyCommand=touch PWNED").write_text("two")
    target = SshTarget.parse(destination, config)
    with RemoteFolder(target) as folder:
        target.copy([Path("a:b/f"), Path("-oProxyCommand=touch PWNED")], folder + "/")
        out = target.check(["cat", "--", "f", "-oProxyCommand=touch PWNED"], "cat", cwd=folder)
    assert out == "onetwo" and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("text, expected", [
    ("pi@raspberrypi.local", ("pi@raspberrypi.local", None)),
    ("root@10.0.0.7:2222", ("root@10.0.0.7", 2222)),
    ("board", ("board", None)),
    ("me@[::1]:22", ("me@::1", 22)),
])
def test_ssh_destinations(text, expected):
    target = SshTarget.parse(text)
    assert (target.destination, target.port) == expected


@pytest.mark.parametrize("text", ["user@", "a@b:0", "a@b:99999", "a b@c", "@host", "user@host;rm -rf"])
def test_bad_ssh_destinations_are_refused(text):
    with pytest.raises(MoaEdgeError, match="expected user@host"):
        SshTarget.parse(text)


@pytest.mark.board
@pytest.mark.parametrize("board_name", ["host", "rpi4"])
def test_energy_over_ssh_samples_on_the_board(board_name, sshd, tmp_path):
    """The board's own sampler build (rpi4: under its qemu, which starts the runner's qemu)
    reads the board's sensor files, found over ssh; a flat 4 W profile reads as 4 W."""
    from test_energy import Profile, _hwmon, _tiny_model
    from moa_edge.energy import measure_energy
    board = require_board(board_name)
    destination, config = sshd
    convert(_tiny_model(tmp_path / "t.onnx"), tmp_path / "p")
    profile = Profile(_hwmon(tmp_path / "root", power_uw=4_000_000) / "power1_input", counter=False)
    profile.start()
    try:
        result = measure_energy(tmp_path / "p", board, "hwmon:/sys/class/hwmon/hwmon3", sysfs_root=tmp_path / "root",
                                iterations=1000 if board_name == "host" else 40, idle_ms=300, interval_us=5000,
                                ssh=SshTarget.parse(destination, config))
    finally:
        profile.stop.set()
        profile.join()
    assert result["ssh"] == destination.rsplit(":", 1)[0]
    assert result["idle_power_w"] == pytest.approx(4.0, rel=0.05)
    assert result["active_power_w"] == pytest.approx(4.0, rel=0.05)


def test_a_sensor_missing_on_the_board_is_one_clear_error(sshd, tmp_path):
    from moa_edge.energy.sensors import parse_sensor
    from moa_edge.energy import RemoteFiles
    destination, config = sshd
    with pytest.raises(MoaEdgeError, match="no channel labelled 'VDD_IN'"):
        parse_sensor("hwmon-label:VDD_IN", tmp_path, RemoteFiles(SshTarget.parse(destination, config)))


def test_validate_and_run_verbs_take_ssh(sshd, tmp_path, capsys):
    from moa_edge.cli import main
    destination, config = sshd
    path = _model(tmp_path / "m.onnx")
    assert main(["validate", str(path), "--board", "rpi4", "--ssh", destination, "--ssh-config", config,
                 "--json", str(tmp_path / "v.json")]) == 0
    assert "ALL PASS" in capsys.readouterr().out
    convert(path, tmp_path / "p")
    np.savez(tmp_path / "in.npz", x=np.ones((5, 40), np.float32))
    assert main(["run", str(tmp_path / "p"), "--inputs", str(tmp_path / "in.npz"), "--outputs",
                 str(tmp_path / "out.npz"), "--ssh", destination, "--ssh-config", config]) == 0
    assert f"over ssh {destination.rsplit(':', 1)[0]}" in capsys.readouterr().out
    assert main(["validate", str(path), "--board", "host,rpi4", "--ssh", destination]) == 1
    assert "give a single --board" in capsys.readouterr().err


def test_bench_model_times_the_board_over_ssh(sshd, tmp_path, capsys):
    import json
    from moa_edge.cli import main
    destination, config = sshd
    path = _model(tmp_path / "m.onnx")
    assert main(["bench", "model", str(path), "--repeat", "3", "--board", "rpi4", "--ssh", destination,
                 "--ssh-config", config, "--out", str(tmp_path / "out"), "--json", str(tmp_path / "b.json")]) == 0
    remote = json.loads((tmp_path / "b.json").read_text())["board_latency"]
    assert remote["board"] == "rpi4" and remote["moa_edge_us"] > 0
    assert "rpi4 over ssh" in capsys.readouterr().out


def test_bench_attention_times_the_kernels_on_the_board_over_ssh(sshd, tmp_path, capsys):
    """The board's build of the generated kernel and of the naive one, run over ssh, each
    output checked against PyTorch float64 on the host."""
    import json
    from moa_edge.cli import main
    destination, config = sshd
    assert main(["bench", "attention", "--seq", "64", "--causal", "yes", "--repeat", "1", "--no-time", "--no-count",
                 "--board", "rpi4", "--ssh", destination, "--ssh-config", config, "--out", str(tmp_path),
                 "--json", str(tmp_path / "a.json")]) == 0
    (point,) = json.loads((tmp_path / "a.json").read_text())["board"]["timing"]
    assert point["time_us"]["moa_edge"] > 0 and point["errors"]["moa_edge"]["max_abs_err"] < 1e-5
    assert "rpi4 over ssh, seq 64 causal" in capsys.readouterr().out



def test_bench_model_over_ssh_takes_a_board_file(sshd, tmp_path, capsys):
    """--board may be the path of the board's TOML file (a renamed copy of host: native build,
    run over ssh)."""
    import json
    from moa_edge.cli import main
    destination, config = sshd
    path = _model(tmp_path / "m.onnx")
    assert main(["bench", "model", str(path), "--repeat", "1", "--board", str(board_file(tmp_path)), "--ssh",
                 destination, "--ssh-config", config, "--out", str(tmp_path / "out"),
                 "--json", str(tmp_path / "b.json")]) == 0
    remote = json.loads((tmp_path / "b.json").read_text())["board_latency"]
    assert remote["board"] == "my board" and remote["moa_edge_us"] > 0
    assert "my board over ssh" in capsys.readouterr().out


def test_bench_attention_over_ssh_takes_a_board_file(sshd, tmp_path, capsys):
    import json
    from moa_edge.cli import main
    destination, config = sshd
    assert main(["bench", "attention", "--seq", "64", "--causal", "yes", "--repeat", "1", "--no-time", "--no-count",
                 "--board", str(board_file(tmp_path)), "--ssh", destination, "--ssh-config", config,
                 "--out", str(tmp_path), "--json", str(tmp_path / "a.json")]) == 0
    remote = json.loads((tmp_path / "a.json").read_text())["board"]
    assert remote["board"] == "my board" and remote["timing"][0]["errors"]["moa_edge"]["max_abs_err"] < 1e-5
    assert "my board over ssh, seq 64 causal" in capsys.readouterr().out


def test_generate_over_ssh_gives_transformers_tokens(sshd, tmp_path, capsys):
    """The token loop on the board over ssh (the emulated rpi4 behind the local sshd): the ids
    stream back and are transformers' own greedy tokens."""
    from moa_edge.cli import main
    require_board("rpi4")
    destination, config = sshd
    case = decoders.cached_decoder("llama", "torchscript", 17, tmp_path)
    convert(case.path, tmp_path / "p", board=load_board("rpi4"), max_context=32, prefill_chunk=4)
    prompt = [5, 9, 1, 33, 70, 2]
    want = decoders.reference_generate(case, prompt, 6)
    assert main(["generate", str(tmp_path / "p"), "--board", "rpi4", "--prompt-ids", ",".join(map(str, prompt)),
                 "--max-new-tokens", "6", "--ssh", destination, "--ssh-config", config,
                 "--json", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr()
    assert out.out.split() == [str(t) for t in want]
    assert f"over ssh {destination.rsplit(':', 1)[0]}" in out.err
    assert json.loads((tmp_path / "g.json").read_text())["tokens"] == want
