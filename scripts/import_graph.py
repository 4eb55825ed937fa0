"""Print the package's import cycles and upward imports (a check anyone can run; no imports made).

An *upward* import is a module importing a package that contains it (``from bort import x``
inside ``bort.pretrain.loop``, or ``from . import x`` inside a sub-package's module). A *cycle*
is a strongly connected set of modules; importing ``a.b.c`` also imports the packages ``a.b``
and ``a``, so those edges count too. Exit status 1 when either is found::

    python scripts/import_graph.py            # this checkout's bort/
    python scripts/import_graph.py --edges    # and every module's imports
"""
import argparse
import ast
import os
import sys
from typing import Dict, List, Set


def modules(root: str) -> Dict[str, str]:
    """Module name -> file, for every ``.py`` under ``root`` (a package folder)."""
    base = os.path.dirname(os.path.abspath(root))
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                mod = os.path.relpath(path, base)[:-3].replace(os.sep, '.')
                found[mod[:-len('.__init__')] if mod.endswith('.__init__') else mod] = path
    return found


def imports(mods: Dict[str, str]) -> Dict[str, Set[str]]:
    """Module -> the project modules it imports (at any depth of the file: lazy imports too)."""
    graph = {}
    for mod, path in mods.items():
        package = mod if path.endswith('__init__.py') else mod.rpartition('.')[0]
        deps = set()
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                    target = '.'.join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ''
                for alias in node.names:
                    sub = f'{target}.{alias.name}'
                    deps.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[mod] = {d for d in deps if d in mods and d != mod}
    return graph


def ancestors(mod: str) -> List[str]:
    parts = mod.split('.')
    return ['.'.join(parts[:i]) for i in range(1, len(parts))]


def upward(graph: Dict[str, Set[str]]) -> List[str]:
    return sorted(f'{m} -> {d}' for m, deps in graph.items() for d in deps if d in ancestors(m))


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), with implicit
    parent-package edges added."""
    full = {m: set(deps) for m, deps in graph.items()}
    for m, deps in graph.items():
        for d in deps:
            full[m].update(a for a in ancestors(d) if a in graph and a not in ancestors(m)
                           and a != m)
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(full[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(full):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('package', nargs='?', default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bort'),
        help='the package folder to read (default: this checkout\'s bort/)')
    parser.add_argument('--edges', action='store_true', help='also list every module\'s imports')
    args = parser.parse_args(argv)
    graph = imports(modules(args.package))
    if args.edges:
        for mod in sorted(graph):
            print(f'{mod} -> {" ".join(sorted(graph[mod]))}')
    up, cyc = upward(graph), cycles(graph)
    print(f'{len(graph)} modules, {sum(map(len, graph.values()))} imports')
    print(f'upward imports: {len(up)}')
    for line in up:
        print(f'  {line}')
    print(f'import cycles: {len(cyc)}')
    for comp in cyc:
        print(f'  {" <-> ".join(comp)}')
    return 1 if up or cyc else 0


if __name__ == '__main__':
    sys.exit(main())
