#!/usr/bin/env python3
"""Counts the public API: items reachable from the crate root without the `internals` door
(modules, types, functions, constants, inherent methods, public fields, variants), from
rustdoc's JSON. Usage (nightly rustdoc):
  cargo +nightly rustdoc --lib -- -Z unstable-options --output-format json --document-hidden-items
  python3 scripts/public_api.py target/doc/tee_risk.json
"""
import json,sys
d=json.load(open(sys.argv[1])); idx=d['index']
seen=set()
def visit(i, skip=('internals', 'fuzzing')):
    i=str(i)
    if i in seen or i not in idx: return
    it=idx[i]
    if it.get('crate_id')!=0: return
    if it['visibility'] not in ('public','default') and it['visibility']!='public':
        pass
    seen.add(i)
    k,inner=list(it['inner'].items())[0]
    if k=='module':
        for c in inner['items']:
            ci=idx.get(str(c))
            if ci and ci.get('name') in skip: continue
            visit(c)
    elif k=='use':
        if inner.get('id') is not None: visit(inner['id'])
    elif k=='struct':
        kind=inner['kind']
        if 'plain' in kind:
            for f in kind['plain']['fields']: 
                if idx[str(f)]['visibility']=='public': visit(f)
        for im in inner['impls']: visit_impl(im)
    elif k=='enum':
        for v in inner['variants']: visit(v)
        for im in inner['impls']: visit_impl(im)
    elif k=='trait':
        for m in inner['items']: visit(m)
def visit_impl(im):
    it=idx.get(str(im))
    if not it: return
    inner=it['inner']['impl']
    if inner.get('trait') is not None or inner.get('synthetic') or inner.get('blanket_impl'): return
    for m in inner['items']:
        mi=idx[str(m)]
        if mi['visibility']=='public': seen.add(str(m))
visit(d['root'])
seen.discard(str(d['root']))
import collections
c=collections.Counter(list(idx[i]['inner'].keys())[0] for i in seen)
print(len(seen)-c['use'], dict(c))
