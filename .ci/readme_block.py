"""Print the first ```bash block under a README heading: CI runs the README's own lines."""

import re
import sys
from pathlib import Path

path, heading = sys.argv[1], sys.argv[2]
text = Path(path).read_text(encoding="utf-8")
section = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
block = re.search(r"```bash\n(.*?)```", section.group(1), re.S) if section else None
if block is None:
    sys.exit(f"{path}: no ```bash block under '## {heading}'")
print(block.group(1).strip())
