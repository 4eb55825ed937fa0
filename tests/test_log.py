"""bort.log: one JSON object per line in metrics.jsonl, logging and progress bars on rank 0."""
import json
import os
import logging

import numpy as np
import pytest

from bort.distributed import Comm
from bort.log import MetricsLog, progress, setup_logging


def test_metrics_one_json_object_per_line(tmp_path):
    path = tmp_path / 'deep' / 'metrics.jsonl'  # the folder is created on the first write
    metrics = MetricsLog(str(path))
    assert metrics.read() == []
    metrics.write({'step': 1, 'loss': np.float32(0.25), 'acc': np.float64(0.5)})
    metrics.write({'step': 2, 'task': 'RTE'})
    MetricsLog(str(path)).write({'step': 3})  # a resumed run appends, never rewrites
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]  # every line stands alone
    assert [r['step'] for r in records] == [1, 2, 3]
    assert records[0]['loss'] == 0.25 and records[0]['acc'] == 0.5 and records[1]['task'] == 'RTE'
    assert all(isinstance(r['time'], float) and r['time'] > 1.6e9 for r in records)
    assert metrics.read() == records


def test_metrics_only_on_rank_0(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    MetricsLog(str(path), comm=Comm(rank=1, size=2)).write({'step': 1})
    assert not path.exists()
    MetricsLog(str(path), comm=Comm(rank=0, size=2)).write({'step': 1})
    assert len(path.read_text().splitlines()) == 1


@pytest.fixture
def restore_root_logger():
    """setup_logging replaces the root logger's handlers (pytest's own among them)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_logging_on_rank_0_to_stderr_and_file(tmp_path, capsys, restore_root_logger):
    log_file = tmp_path / 'logs' / 'run.log'
    setup_logging(Comm(), log_file=str(log_file))
    logging.getLogger('bort.test').info('hello %d', 7)
    logging.getLogger('bort.test').debug('hidden')
    assert 'bort.test: hello 7' in log_file.read_text()
    assert 'hidden' not in log_file.read_text()
    assert 'bort.test: hello 7' in capsys.readouterr().err
    setup_logging(Comm())  # calling it again replaces the handlers instead of doubling them
    logging.getLogger('bort.test').info('once')
    assert capsys.readouterr().err.count('once') == 1


def test_logging_silent_on_other_ranks(tmp_path, capsys, restore_root_logger):
    log_file = tmp_path / 'run.log'
    setup_logging(Comm(rank=1, size=2), log_file=str(log_file))
    logging.getLogger('bort.test').info('from rank 1')
    logging.getLogger('bort.test').warning('a warning from rank 1')
    assert not log_file.exists()
    assert 'rank 1' not in capsys.readouterr().err


def test_progress_bar_on_rank_0_only(capsys):
    bar = progress(range(4), comm=Comm(), desc='steps', disable=False)
    assert bar.mininterval == 60.0  # stderr is captured, not a terminal: few redraws
    assert list(bar) == [0, 1, 2, 3]
    assert 'steps' in capsys.readouterr().err
    for comm in (Comm(rank=1, size=2), Comm()):  # other ranks, or asked to be quiet
        bar = progress(range(4), comm=comm, desc='steps', disable=comm.is_root)
        assert bar.disable and list(bar) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ''
    with progress(total=3, comm=Comm(rank=1, size=2)) as bar:  # the manual-update form
        bar.update(3)
    assert capsys.readouterr().err == ''


def _read_events(folder):
    """Every scalar in the TensorBoard event files of ``folder``: {tag: [(step, value)]}.

    An independent reader of the TFRecord framing (length, CRC, payload, CRC) that TensorBoard
    reads, parsing each payload with the Event protocol buffer.
    """
    import glob
    import struct
    from tensorboardX.proto.event_pb2 import Event
    scalars = {}
    files = sorted(glob.glob(os.path.join(str(folder), 'events.out.tfevents.*')))
    assert files, os.listdir(str(folder))
    for path in files:
        with open(path, 'rb') as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            length, = struct.unpack('<Q', data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_metrics_are_tensorboard_scalars_beside_the_jsonl(tmp_path):
    path = tmp_path / 'run' / 'metrics.jsonl'
    metrics = MetricsLog(str(path))
    metrics.write({'step': 10, 'mlm_loss': 2.5, 'lr': np.float32(1e-4), 'note': 'text'})
    metrics.write({'step': 20, 'mlm_loss': 2.0, 'eval': {'acc': 0.25}, 'final': True})
    metrics.write({'iteration': 3, 'dev_score': 0.75})  # Agora: iterations are its steps
    metrics.close()  # the writer's thread has written every event (also done at exit)
    scalars = _read_events(tmp_path / 'run')
    assert scalars['mlm_loss'] == [(10, 2.5), (20, 2.0)]
    assert scalars['lr'] == [(10, pytest.approx(1e-4))]
    assert scalars['eval/acc'] == [(20, 0.25)]
    assert scalars['dev_score'] == [(3, 0.75)]
    assert 'note' not in scalars and 'step' not in scalars and 'time' not in scalars
    assert 'final' not in scalars  # a flag, not a curve


def test_tensorboard_events_rank0_only_and_can_be_off(tmp_path):
    worker = MetricsLog(str(tmp_path / 'w' / 'metrics.jsonl'), Comm(rank=1, size=2))
    worker.write({'step': 1, 'loss': 1.0})
    assert not (tmp_path / 'w').exists()
    plain = MetricsLog(str(tmp_path / 'p' / 'metrics.jsonl'), tensorboard=False)
    plain.write({'step': 1, 'loss': 1.0})
    assert os.listdir(str(tmp_path / 'p')) == ['metrics.jsonl']


def test_event_writer_does_not_import_torch(tmp_path):
    """tensorboardX would import torch (seconds; a crash in a Horovod worker, where libmxnet.so's
    C++ symbols are global); the log imports it with torch hidden, and torch stays importable."""
    import subprocess
    import sys
    code = ('import importlib.util, sys\nfrom bort.log import MetricsLog\n'
            f'log = MetricsLog({str(tmp_path / "metrics.jsonl")!r})\n'
            'log.write({"step": 1, "loss": 0.5})\nlog.close()\n'
            'print("torch imported", "torch" in sys.modules)\n'
            'if importlib.util.find_spec("torch"):\n    import torch\n    torch.zeros(1)\n')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=repo),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'torch imported False' in proc.stdout
    assert _read_events(tmp_path) == {'loss': [(1, 0.5)]}
