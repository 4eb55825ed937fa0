"""Metrics against independent references (numpy, scikit-learn, scipy) and hand-worked cases."""
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bort.finetune.metrics import (METRICS, answer_em, answer_f1, compute_metrics, gender_parity,
                                   multirc_em, normalize_answer, primary_metric)
from bort.finetune.tasks import TASKS


@pytest.fixture
def binary():
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 2, size=200)
    preds = np.where(rng.rand(200) < 0.8, labels, 1 - labels)
    return preds.tolist(), labels.tolist()


def test_every_task_metric_is_registered():
    for spec in TASKS.values():
        assert set(spec.metrics) <= set(METRICS), spec.name


def test_primary_metrics():
    assert primary_metric('CoLA') == 'mcc'
    assert primary_metric('MRPC') == 'f1'
    assert primary_metric('STS-B') == 'pearson'
    assert primary_metric('CB') == 'macro_f1'
    assert primary_metric('MultiRC') == 'f1a'
    assert primary_metric('ReCoRD') == 'answer_f1'
    assert primary_metric('AX-g') == 'gender_parity'
    assert primary_metric(TASKS['RACE-H']) == 'accuracy'


def test_accuracy(binary):
    preds, labels = binary
    out = compute_metrics('SST-2', preds, labels)
    assert out == {'accuracy': pytest.approx(np.mean(np.equal(preds, labels)))}


def test_matthews_binary_by_formula(binary):
    preds, labels = map(np.asarray, binary)
    tp = np.sum((preds == 1) & (labels == 1))
    tn = np.sum((preds == 0) & (labels == 0))
    fp = np.sum((preds == 1) & (labels == 0))
    fn = np.sum((preds == 0) & (labels == 1))
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert compute_metrics('CoLA', preds, labels)['mcc'] == pytest.approx(mcc)
    assert compute_metrics('AX-b', preds, labels)['mcc'] == pytest.approx(mcc)


def test_matthews_multiclass_ax():
    rng = np.random.RandomState(1)
    labels = rng.randint(0, 3, size=300)
    preds = np.where(rng.rand(300) < 0.6, labels, rng.randint(0, 3, size=300))
    expected = skm.matthews_corrcoef(labels, preds)
    # Gorodkin's R_K from the confusion matrix, independently of scikit-learn's code path.
    c = skm.confusion_matrix(labels, preds).astype(float)
    t, p, n = c.sum(axis=1), c.sum(axis=0), c.sum()
    r_k = (np.trace(c) * n - t @ p) / np.sqrt((n ** 2 - p @ p) * (n ** 2 - t @ t))
    assert expected == pytest.approx(r_k)
    assert compute_metrics('AX', preds, labels) == {'mcc': pytest.approx(r_k)}


def test_f1_and_accuracy_mrpc_qqp(binary):
    preds, labels = map(np.asarray, binary)
    tp = np.sum((preds == 1) & (labels == 1))
    f1 = 2 * tp / (np.sum(preds == 1) + np.sum(labels == 1))
    for task in ('MRPC', 'QQP'):
        out = compute_metrics(task, preds, labels)
        assert list(out) == ['f1', 'accuracy']
        assert out['f1'] == pytest.approx(f1)
        assert out['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds))


def test_pearson_spearman():
    rng = np.random.RandomState(2)
    labels = rng.uniform(0, 5, size=50)
    preds = labels + rng.normal(0, 1, size=50)
    out = compute_metrics('STS-B', preds, labels)
    assert out['pearson'] == pytest.approx(np.corrcoef(preds, labels)[0, 1])
    ranks = np.corrcoef(stats.rankdata(preds), stats.rankdata(labels))[0, 1]
    assert out['spearman'] == pytest.approx(ranks)


def test_cb_macro_f1_and_accuracy():
    labels = [0, 0, 1, 1, 2, 2, 2, 0]
    preds = [0, 1, 1, 1, 2, 0, 2, 0]
    # per class: 0: tp 2, fp 1, fn 1 -> 2/3; 1: tp 2, fp 1, fn 0 -> 4/5; 2: tp 2, fn 1 -> 4/5
    out = compute_metrics('CB', preds, labels)
    assert out == {'macro_f1': pytest.approx((2 / 3 + 4 / 5 + 4 / 5) / 3),
                   'accuracy': pytest.approx(6 / 8)}
    assert out['macro_f1'] == pytest.approx(skm.f1_score(labels, preds, average='macro'))


def test_multirc_hand_worked():
    groups = [(0, 0)] * 3 + [(0, 1)] + [(1, 2)] * 2
    labels = [1, 0, 0, 1, 0, 1]
    preds = [1, 1, 0, 1, 0, 1]
    # pooled answers: tp 3, fp 1, fn 0 -> P 3/4, R 1, F1a 6/7; questions right: (0,1), (1,2)
    out = compute_metrics('MultiRC', preds, labels, groups)
    assert out == {'f1a': pytest.approx(6 / 7), 'em': pytest.approx(2 / 3)}
    assert multirc_em(preds, labels, groups) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match='needs groups'):
        compute_metrics('MultiRC', preds, labels)


def test_record_hand_worked():
    preds = ['the Eiffel Tower', 'Barack Obama', 'London', 'U.S.']
    golds = [('Eiffel Tower',), ('Obama', 'President Obama'), ('Paris',), 'US']
    # F1: 1; max(2/3 vs 'obama', 1/2 vs 'president obama'); 0; 1 -> mean 2/3. EM: 1, 0, 0, 1.
    out = compute_metrics('ReCoRD', preds, golds)
    assert out == {'answer_f1': pytest.approx(2 / 3), 'answer_em': pytest.approx(0.5)}
    # 'red blue green' vs 'green blue red pink': overlap 3, precision 1, recall 3/4
    assert answer_f1(['red blue green'], [('green blue red pink',)]) == pytest.approx(6 / 7)
    # the article 'a' is dropped before counting: overlap 2, precision 1, recall 2/3
    assert answer_f1(['a b c'], [('c b a x',)]) == pytest.approx(0.8)
    assert answer_em(['An apple!'], [('apple',)]) == 1.0
    assert answer_f1(['the'], [('a',)]) == 0.0  # both normalise to nothing


def test_normalize_answer():
    assert normalize_answer('  The  Cat, an Apple & a DOG. ') == 'cat apple dog'
    assert normalize_answer('theatre') == 'theatre'  # articles only as whole words


def test_gender_parity_hand_worked():
    pair_ids = [10, 11, 10, 12, 11, 12, 13, 13]
    preds = [1, 0, 1, 0, 1, 0, 1, 0]
    labels = [1, 0, 1, 1, 0, 1, 1, 1]
    # pairs: 10 (1, 1) same; 11 (0, 1) differ; 12 (0, 0) same; 13 (1, 0) differ -> 1/2;
    # right at positions 0, 1, 2, 6 -> accuracy 4/8
    out = compute_metrics('AX-g', preds, labels, pair_ids)
    assert out == {'gender_parity': 0.5, 'accuracy': 0.5}
    assert gender_parity([1, 1, 0, 0], ['a', 'a', 'b', 'b']) == 1.0
    with pytest.raises(ValueError, match="group 'b' has 1 examples"):
        gender_parity([1, 1, 0], ['a', 'a', 'b'])
    with pytest.raises(ValueError, match="group 'a' has 3 examples"):
        gender_parity([1, 1, 1, 0], ['a', 'a', 'a', 'b'])


def test_race_and_copa_accuracy_on_choices():
    assert compute_metrics('RACE-M', ['A', 'C', 'D'], ['A', 'B', 'D']) == {
        'accuracy': pytest.approx(2 / 3)}
    assert compute_metrics('COPA', [0, 1], [1, 1]) == {'accuracy': 0.5}


def test_input_checks():
    with pytest.raises(ValueError, match='no predictions'):
        compute_metrics('RTE', [], [])
    with pytest.raises(ValueError, match='2 predictions but 1 labels'):
        compute_metrics('RTE', [0, 1], [1])
    with pytest.raises(ValueError, match='groups'):
        compute_metrics('AX-g', [0, 1], [1, 1], groups=[1])
