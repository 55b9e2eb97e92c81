#!/bin/sh
# tritonserver from the nvidia-pytriton wheel (stand-in image): its libraries, the Python backend
# directory, and the server venv first on PATH (the backend stub runs `python3` from PATH).
export LD_LIBRARY_PATH=/opt/tritonserver/libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/opt/tritonserver/bin:$PATH
exec /opt/tritonserver/dist/bin/tritonserver --backend-directory=/opt/tritonserver/backends "$@"
