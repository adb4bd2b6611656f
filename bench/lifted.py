"""Config shared by the benchmarks: the seed's limits (100 spawns/h per key and per IP,
$50/day, 50 live agents per key) would refuse a benchmark after its first hundred
requests, so every benchmark config lifts them with this block."""

LIFTED_LIMITS = """
[limits]
spawn = 100000000
agent_read = 100000000
agents_list = 100000000
system = 100000000
other = 100000000

[budget]
daily_budget = 1e9
monthly_ceiling = 1e12
spike_per_hour = 1e12
max_agents_per_key = 100000000
"""


# A daemon on the built-in offline provider (no upstream: the daemon and its disk only), auth
# on as shipped, limits lifted; ``.format(sync=, workdir=, lifted=LIFTED_LIMITS)``.
OFFLINE_CONFIG = """
[server]
log_level = "warning"

[runtime]
max_concurrency = 64

[store]
synchronous = "{sync}"

[security]
auth = true

[plugins]
dropin_dir = "{workdir}/no-plugins"

{lifted}

[providers.offline]
plugin = "offline"
max_concurrency = 256
hourly_limit = 100000000

[models.k2p5]
provider = "offline"
upstream = "k2p5"
input_per_1k = 0.0005
output_per_1k = 0.0015
blended_per_1k = 0.001
"""
