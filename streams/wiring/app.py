"""The engine as a plain Faust app, configured by the environment (and optionally EXPLORE_CONFIG).

    faust -A streams.wiring.app worker -l info       # or: python -m streams.wiring.app worker -l info

`explore serve` does the same with command-line options on top (`explore serve --help`).
"""

from streams.config import EngineConfig
from streams.wiring.worker import create_app, ensure_topics

config = EngineConfig.load()
ensure_topics(config)
app = create_app(config)

if __name__ == "__main__":
    app.main()
