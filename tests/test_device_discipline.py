"""Device discipline without a GPU: a reading of the code's syntax that catches the bugs a GPU
run found (a CPU tensor meeting a CUDA one), on a machine that has no GPU.

The rules, over ``workbench/`` and ``analyses/``:

1. Every tensor factory (``torch.zeros``, ``ones``, ``empty``, ``full``, ``arange``, ``tensor``,
   ``rand*``, ``eye``, ``linspace``, ``as_tensor`` ...) passes ``device=``, or says why the CPU
   is meant in a ``# cpu: ...`` comment: on the call's lines, on the line just above it, or on
   (or just above) the ``def`` of the function it is in (a function whose tensors are all on
   the CPU by design, like a prompt generator).
2. ``.numpy()`` is called on an expression that went through ``.cpu()`` (or the line says
   ``# cpu:``). ``.tolist()`` is not checked: it copies from any device.
3. No function defaults a ``device`` parameter to ``"cpu"`` (a silent move to the CPU is how a
   cache came to be indexed with a CUDA mask), except a loader (``load*``, ``__init__``),
   where the default is where a model lives, the user's choice.

The fixtures below are the four device bugs the last GPU check found, in their old code; the
checker flags every one of them, and finds nothing in the code as it is now.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "rand", "randn", "randint", "randperm", "eye",
             "linspace", "logspace", "as_tensor", "empty_strided", "normal", "bernoulli", "scalar_tensor",
             "tril_indices", "triu_indices"}
MARK = "# cpu:"


def _marked(lines: list[str], first: int, last: int) -> bool:
    """A ``# cpu:`` comment on lines ``first..last`` (1-based) or on a comment line just above."""
    if any(MARK in lines[i - 1] for i in range(first, last + 1)):
        return True
    return first > 1 and lines[first - 2].strip().startswith(MARK)


def _cpu_functions(tree: ast.AST, lines: list[str]) -> list[tuple[int, int]]:
    """Line ranges of the functions whose ``def`` line (or the line above it) says ``# cpu:``."""
    return [(node.lineno, node.end_lineno or node.lineno) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _marked(lines, node.lineno, node.lineno)]


def _through_cpu(value: ast.AST, on_cpu: set[str] = frozenset()) -> bool:
    """Whether a chain of method calls ending in ``value`` passes through ``.cpu()`` or ``.to("cpu")``,
    or starts at a name ``on_cpu`` holds (assigned such a chain earlier in the function)."""
    while isinstance(value, (ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
            if value.func.attr == "cpu":
                return True
            if value.func.attr == "to" and any(isinstance(a, ast.Constant) and a.value == "cpu" for a in value.args):
                return True
            value = value.func.value
        elif isinstance(value, ast.Call):
            return False
        else:
            value = value.value
    return isinstance(value, ast.Name) and value.id in on_cpu


def _cpu_names(tree: ast.AST) -> set[str]:
    """Names assigned (anywhere in the module) only from chains through ``.cpu()``/``.to("cpu")``."""
    good: set[str] = set()
    bad: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    (good if _through_cpu(node.value) else bad).add(target.id)
    return good - bad


def _scalar_of(tree: ast.AST) -> set[int]:
    """ids of the calls wrapped directly in ``int()``/``float()``/``bool()``: a Python number, on no device."""
    return {id(node.args[0]) for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("int", "float", "bool") and len(node.args) == 1}


def _cpu_defaults(node: ast.AST) -> list[str]:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("load") or node.name == "__init__":
        return []
    a = node.args
    pos = a.posonlyargs + a.args
    pairs = list(zip(pos[len(pos) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
    return [arg.arg for arg, d in pairs if arg.arg == "device" and isinstance(d, ast.Constant) and d.value == "cpu"]


def findings(source: str, name: str = "<fixture>") -> list[str]:
    """The rule breaks in one module's source, as ``name:line: what``."""
    tree = ast.parse(source)
    lines = source.splitlines()
    exempt = _cpu_functions(tree, lines)
    on_cpu, scalars = _cpu_names(tree), _scalar_of(tree)
    out = []
    for node in ast.walk(tree):
        for arg in _cpu_defaults(node):
            out.append(f"{name}:{node.lineno}: {node.name}({arg}='cpu') moves tensors to the CPU unasked")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f, first, last = node.func, node.lineno, node.end_lineno or node.lineno
        if _marked(lines, first, last) or any(a <= first <= b for a, b in exempt):
            continue
        if f.attr in FACTORIES and isinstance(f.value, ast.Name) and f.value.id == "torch" and id(node) not in scalars:
            if not any(k.arg == "device" for k in node.keywords):
                out.append(f"{name}:{first}: torch.{f.attr}(...) without device= (or a '# cpu:' reason)")
        elif f.attr == "numpy" and not _through_cpu(f.value, on_cpu):
            out.append(f"{name}:{first}: .numpy() of a tensor that did not go through .cpu()")
    return out


def _sources() -> list[Path]:
    return sorted(p for d in ("workbench", "analyses") for p in (ROOT / d).rglob("*.py"))


# Files a change under way may leave with at most this many findings (file -> count); empty:
# every file follows the rules.
PENDING: dict[str, int] = {}


def test_the_code_follows_the_rules():
    found = [hit for p in _sources() for hit in findings(p.read_text(), str(p.relative_to(ROOT)))]
    rest = [hit for hit in found if hit.split(":")[0] not in PENDING]
    assert not rest, "device discipline:\n" + "\n".join(rest)
    for name, most in PENDING.items():
        assert sum(hit.startswith(name + ":") for hit in found) <= most, name


# ----------------------------------------------------------------------------- the four old bugs
# Each is the code as it was when the GPU check failed on it (git: 414676f and before), cut
# down to the lines that matter.

OLD_ABLATION_MEAN = '''
def run_with_cache(model, inputs, names, batch_size=None, progress=False, spill_dir=None,
                   return_logits=True, device: str | torch.device = "cpu"):
    ...

def mean_head_outputs(model, prompts):
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.shape.n_layers)]
    tokens = model.to_tokens(prompts)
    _, cache = run_with_cache(model, tokens, names, return_logits=False)
    mask = tokens[1].bool()
    return {l: cache[names[l]][mask].mean(dim=0) for l in range(model.shape.n_layers)}
'''

OLD_RETRIEVAL_SCORER = '''
class RetrievalScorer:
    def __init__(self, prompt_ids, spans, n_layers, n_heads, max_steps):
        rows = prompt_ids.shape[0]
        self.seq = torch.cat([prompt_ids, torch.zeros(rows, max_steps, dtype=torch.long, device=prompt_ids.device)], 1)
        self.start, self.end = spans[:, 0], spans[:, 1]
        self.inc = 1.0 / (self.end - self.start).clamp(min=1).float()
        self.scores = torch.zeros(rows, n_layers, n_heads)

    def __call__(self, step, read, token, active):
        top = torch.stack([read[f"blocks.{l}.attn.hook_pattern"].argmax(-1) for l in range(self.n_layers)], 1)
        rows = torch.arange(top.shape[0])[:, None, None]
        at = self.seq[rows, top]
        inside = (top >= self.start[:, None, None]) & (top < self.end[:, None, None])
        hit = inside & (at == token[:, None, None]) & active[:, None, None]
        self.scores += hit.float() * self.inc[:, None, None]
'''

OLD_EDGE_SCORES = '''
class Graph:
    @classmethod
    def build(cls, n_layers, n_heads, parallel=False):
        senders, receivers = _nodes(n_layers, n_heads)
        s_rank = torch.tensor([_rank(s, n_layers, parallel) for s in senders])
        r_rank = torch.tensor([_rank(r, n_layers, parallel) for r in receivers])
        valid = s_rank[:, None] < r_rank[None, :]
        return cls(n_layers, n_heads, tuple(senders), tuple(receivers), valid, parallel)


def edge_scores_from(graph, deltas, grads):
    blocks = [torch.einsum("bpsm,rbpm->sr", d, grads) for d in deltas]
    return torch.cat(blocks, dim=0).masked_fill(~graph.valid, 0.0)
'''

OLD_CIRCUIT_CURVE = '''
def normalised(circuit, full, empty):
    values = torch.stack([torch.as_tensor(circuit, device=full.device), full, empty]).double()
    x = values.T.double().numpy()  # [N 3]
    return bootstrap(x, lambda a: (a[:, 0] - a[:, 2]).mean() / (a[:, 1] - a[:, 2]).mean())
'''


@pytest.mark.parametrize(("source", "expected"), [
    (OLD_ABLATION_MEAN, ["run_with_cache(device='cpu')"]),
    (OLD_RETRIEVAL_SCORER, [":8: torch.zeros", ":12: torch.arange"]),
    (OLD_EDGE_SCORES, [":6: torch.tensor", ":7: torch.tensor"]),
    (OLD_CIRCUIT_CURVE, [":4: .numpy()"]),
], ids=["ablation-cpu-cache-cuda-mask", "retrieval-cpu-and-cuda", "edge-scores-cpu-mask", "circuit-curve-numpy"])
def test_the_old_gpu_bugs_are_flagged(source, expected):
    found = findings(source)
    for what in expected:
        assert any(what in hit for hit in found), (what, found)


def test_a_reason_or_a_device_passes():
    ok = '''
def f(x):
    a = torch.zeros(3, device=x.device)
    b = torch.arange(4)  # cpu: an index; a CPU index may index any device
    # cpu: from a Python list
    c = torch.tensor([1, 2])
    return x.detach().cpu().numpy(), a.float().cpu().numpy()


# cpu: a prompt generator; its callers move the ids
def prompts(n):
    return torch.randint(10, (n, 4)), torch.full((n,), 3)


def load_thing(device="cpu"):
    return None
'''
    assert findings(ok) == []
    assert len(findings("def g(x, device='cpu'):\n    return torch.ones(2)\n")) == 2
