"""Entry point of an AVB hyperparameter study; see `python study/run.py --help`.

Works from any directory, as `ray submit cluster.yaml study/run.py -- ARGS` runs
it (copied alone to the head node): the project itself is installed on every
node by `pip install -r requirements.txt`.
"""

import sys

from study.main import main

if __name__ == "__main__":
    sys.exit(main())
