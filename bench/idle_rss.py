"""Idle RSS at first start of two trees side by side: `python -m j1mskyd serve` on the embedded default, a fresh state dir each time,
VmRSS read 2 s after the first healthy answer; alternating, 4 starts each.  Usage: bench/idle_rss.py BEFORE_TREE AFTER_TREE"""
import os, subprocess, sys, tempfile, time, urllib.request, socket
def free_port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
def rss(tree):
    d=tempfile.mkdtemp(); port=free_port()
    env=dict(os.environ, PYTHONPATH=tree)
    p=subprocess.Popen([sys.executable,"-m","j1mskyd","serve","--host","127.0.0.1","--port",str(port),"--state-dir",d+"/s"],cwd=d,env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health",timeout=1).read(); break
            except Exception: time.sleep(0.1)
        time.sleep(2)
        for line in open(f"/proc/{p.pid}/status"):
            if line.startswith("VmRSS"): return int(line.split()[1])/1024
    finally:
        p.terminate(); p.wait(10)
trees = {"before": sys.argv[1], "after": sys.argv[2]}
res = {"before": [], "after": []}
for i in range(4):
    for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
        res[name].append(rss(trees[name]))
for k,v in res.items(): print(k, [round(x,1) for x in v], "median", round(sorted(v)[len(v)//2],1))
