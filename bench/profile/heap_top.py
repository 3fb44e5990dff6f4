import re,sys
lines=open(sys.argv[1]).read().split('\n')
frac=float(sys.argv[2]) if len(sys.argv)>2 else 0.02
maxd=int(sys.argv[3]) if len(sys.argv)>3 else 14
snaps=[];cur=None
for i,l in enumerate(lines):
    if l.startswith('snapshot='): cur={'start':i}; snaps.append(cur)
    elif l.startswith('mem_heap_B=') and cur is not None: cur['heap']=int(l.split('=')[1])
    elif l.startswith('heap_tree=') and cur is not None: cur['tree']=l.split('=')[1]
peak=[s for s in snaps if s.get('tree')=='peak'][0]
print('peak heap', peak['heap']>>10,'KiB')
i=peak['start']
while not lines[i].startswith('heap_tree'): i+=1
i+=1
total=peak['heap']
def parse(i,depth):
    l=lines[i].strip()
    m=re.match(r'n(\d+): (\d+) (.*)',l)
    n=int(m.group(1)); b=int(m.group(2)); name=m.group(3)
    out=[(depth,b,name)]
    i+=1
    for _ in range(n):
        sub,i=parse(i,depth+1)
        out+=sub
    return out,i
tree,_=parse(i,0)
for d,b,name in tree:
    if b>total*frac and d<=maxd:
        name=re.sub(r'0x[0-9A-F]+: ','',name)
        name=re.sub(r'\(in /.*|\(.*?\.rs:\d+\)','',name)
        if 'UnknownInlinedFun' in name or 'alloc_impl' in name or name.startswith('alloc ') : continue
        print('  '*min(d,12)+f'{b>>10}K {name[:150]}')
