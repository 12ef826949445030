"""prunekit.integrations.huggingface with the real transformers Trainer (CPU, a tiny BERT, random tokens)."""
import copy

import pytest
import torch

import prunekit

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from prunekit.integrations.huggingface import CTFCallback, PruneCallback, PrunekitTrainer  # noqa: E402

SEQ = 8


def _bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=100, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=48, seed=1):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 100, (n, SEQ), generator=g)
        self.labels = (self.ids[:, 0] < 50).long()  # learnable from the first token

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": self.labels[i]}


def _example(data, n=2):
    return {"input_ids": data.ids[:n], "attention_mask": torch.ones(n, SEQ, dtype=torch.long)}


def _args(tmp_path, epochs):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=2e-3,
        save_strategy="no", report_to="none", logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        dataloader_num_workers=0)


def _logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def test_ctf_callback_with_prunekit_trainer_meets_the_rate_and_materializes(tmp_path):
    data, rate = Tokens(), 0.8
    model = _bert()
    callback = CTFCallback(model, rate, example_inputs=_example(data))
    history = []

    class Watch(transformers.TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):  # after the CTF callback's
            history.append(dict(callback.ctf.history[-1]) if callback.ctf.history else None)

    trainer = PrunekitTrainer(model=model, args=_args(tmp_path, 4), train_dataset=data, callbacks=[callback, Watch()])
    trainer.train()
    assert callback.plan is not None
    report = callback.ctf.report()
    total = report["prunable_weights"]
    assert report["kept_weights"] == round((1 - rate) * total)
    assert report["hard_phase"] is True                      # epoch 3 of 4 trained under the frozen masks
    # the penalty drove the masks themselves to the budget before the freeze (the rank fix moved < 2 %)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert history[2]["binary"] == pytest.approx(1 - rate, abs=0.02)
    assert report["rank_fix"]["moved"] < 0.02 * total
    params = dict(model.named_parameters())
    assert sum(int(params[n].count_nonzero()) for n in report["layers"]) == report["kept_weights"]
    small = callback.pruned_model()
    probe = _example(Tokens(n=6, seed=7), n=6)
    assert torch.allclose(_logits(small, probe), _logits(model, probe), atol=1e-5)
    assert prunekit.count(small, probe)["params"] == callback.plan.remaining["params"]


def test_ctf_callback_with_a_plain_trainer_fails_on_the_first_step(tmp_path):
    data = Tokens(n=16)
    model = _bert()
    callback = CTFCallback(model, 0.5, example_inputs=_example(data))
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, 2), train_dataset=data, callbacks=[callback])
    with pytest.raises(RuntimeError, match="PrunekitTrainer"):
        trainer.train()


def test_prune_callback_meets_the_budget_and_masked_weights_stay_zero(tmp_path):
    data = Tokens()
    model = _bert()
    example = _example(data)
    budget = prunekit.Budget(params=0.3)
    callback = PruneCallback(model, budget, "taylor", at_epoch=1, num_batches=2)
    snapshots = {}

    class Snapshot(transformers.TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            snapshots[round(state.epoch)] = {k: v.clone() for k, v in model.state_dict().items()}

    trainer = transformers.Trainer(model=model, args=_args(tmp_path, 3), train_dataset=data,
                                   callbacks=[callback, Snapshot()])
    trainer.train()
    plan = callback.plan
    structures = prunekit.find_structures(copy.deepcopy(model).eval(), example)
    largest = max(s.params for s in structures) / structures.total_params
    assert 0.3 <= plan.achieved["params"] < 0.3 + largest
    kinds = {structures[sid].kind for sid in plan.removed}
    assert len(plan.removed) > 0 and kinds
    zeroed = 0
    for state in (snapshots[2], snapshots[3]):
        for sid in plan.removed:
            for name, dim, idxs in list(structures[sid].slices) + list(structures[sid].consumers):
                part = state[name].index_select(dim, torch.tensor(idxs))
                assert int(part.count_nonzero()) == 0, name
                zeroed += part.numel()
    assert zeroed > 0
    kept = [k for k in snapshots[3] if k.endswith("weight") and not torch.equal(snapshots[3][k], snapshots[2][k])]
    assert kept, "the kept weights did not train after pruning"
    small = callback.pruned_model()
    probe = _example(Tokens(n=6, seed=7), n=6)
    assert torch.allclose(_logits(small, probe), _logits(model, probe), atol=1e-5)
    assert prunekit.count(small, probe)["params"] == plan.remaining["params"]
