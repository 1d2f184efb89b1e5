"""Interop with transformers' DeepseekV4 and DeepSeek's released V4 checkpoints (issue 9).

hf.py        config + weights both ways with a transformers DeepseekV4 directory
deepseek.py  load DeepSeek's inference/ layout (FP8 / FP4 dequantised, shard by shard)
names.py     the parameter-name tables
st_io.py     streaming safetensors reader / writer
formats.py   which layout a directory holds, and loading any of them into our model
"""
