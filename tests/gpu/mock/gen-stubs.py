# gen-stubs.py - stub kernel launchers for tests/gpu/mock: one per cudaError_t
# function of the given cuda-impl.h, logging every argument (struct
# arguments by their bytes); "old" revisions pass a cudaStream_t and read the
# process globals, "new" ones a struct vl2__cu_stream.
#     gen-stubs.py cuda-impl.h old|new > stubs.cpp
import re,sys
hdr=open(sys.argv[1]).read()
old=sys.argv[2]=='old'
# strip comments
h=re.sub(r'/\*.*?\*/','',hdr,flags=re.S)
out=['#include <stdio.h>','#include <string.h>','#include "cuda-impl.h"','#include "mock.h"']
if old:
    out+=['int vl2__cu_gemv_r1 = 1;','extern int vl2__cu_pdl;']
for m in re.finditer(r'cudaError_t\s+(vl2__cu_\w+)\s*\(([^;]*?)\)\s*;',h,flags=re.S):
    name,params=m.group(1),m.group(2)
    ps=[p.strip() for p in params.split(',')]
    body=[f'    mock_begin("{name}");']
    for p in ps:
        pn=re.findall(r'(\w+)\s*$',p)[0]
        if re.search(r'const struct vl2__cu_\w+_args \*',p):
            body.append(f'    mock_bytes("{pn}", {pn}, sizeof(*{pn}));')
        elif 'cudaStream_t' in p or 'struct vl2__cu_stream' in p:
            if old:
                body.append(f'    {{ struct {{ void *s; int pdl, r1; }} t_ = {{ (void *){pn}, vl2__cu_pdl, vl2__cu_gemv_r1 }}; mock_bytes("st", &t_, sizeof(t_)); }}')
            else:
                body.append(f'    mock_bytes("st", &{pn}, sizeof({pn}));')
        else:
            body.append(f'    mock_bytes("{pn}", &{pn}, sizeof({pn}));')
    body.append('    mock_end();\n    return cudaSuccess;')
    out.append(f'cudaError_t {name}({params})\n{{\n'+'\n'.join(body)+'\n}')
out.append('''size_t vl2__cu_moe_router_route_smem(int E, int G) { return 4u * (size_t)(E + G) + 1024; }
size_t vl2__cu_moe_route_small_smem(int E, int G) { return 4u * (size_t)(E + G) + 512; }
size_t vl2__cu_mla_decode_smem(int dk, int nq) { return 4u * (size_t)dk * (size_t)(nq + 32); }
size_t vl2__cu_attn_smem(int dk, int dv, int v_in_k) { return dk > 512 ? 0 : 4u * (size_t)(dk + dv) * 48; }
int vl2__cu_mla_init(int max_smem) { return 0; }
int vl2__cu_mla_decode_nqt(int nq, int dv) { return nq <= 64 && dv <= 512 ? (nq + 15) / 16 : 0; }
int vl2__cu_attn_init(void) { return 232448; }''')
print('\n'.join(out))
