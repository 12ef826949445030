import torch

# Tests run on 2-core CI machines, often beside each other: one thread each keeps them stable.
torch.set_num_threads(1)
