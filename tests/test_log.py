"""bort.log: one JSON object per line in metrics.jsonl, logging and progress bars on rank 0."""
import json
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
