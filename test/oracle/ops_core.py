"""Oracle ops for the core: creation, cast, elementwise, reductions."""
import torch
from oracle import op


@op("add")
def add(i, a):
    return i["a"] + i["b"]


@op("sub")
def sub(i, a):
    return i["a"] - i["b"]


@op("mul")
def mul(i, a):
    return i["a"] * i["b"]


@op("div")
def div(i, a):
    return i["a"] / i["b"]
