"""Without their library the adapter modules still import; creating a callback names the extra to install."""
import subprocess
import sys
import textwrap


def test_adapters_without_lightning_or_transformers():
    code = textwrap.dedent("""
        import sys
        for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "transformers"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import torch
        from prunekit.integrations import huggingface, lightning
        net = torch.nn.Linear(2, 2)
        for module, name in ((lightning, "CTFCallback"), (lightning, "PruneCallback"),
                             (huggingface, "CTFCallback"), (huggingface, "PruneCallback"),
                             (huggingface, "PrunekitTrainer")):
            try:
                getattr(module, name)(net, 0.5)
            except ImportError as error:
                print(name, error)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 5
    assert all("pip install 'prunekit[lightning]'" in line for line in lines[:2])
    assert all("pip install 'prunekit[hf]'" in line for line in lines[2:])
