"""The training loop: masked SGD for a phase, distillation, evaluation, frozen layers and dropouts whose rate is a
tensor. Imports the data, the pruning math and the schemas, never the run or the policies."""
