// Umbrella header: ops, C++ modules, RoPE scaling and its config.json reader, version.
#pragma once

#include "posenc/hf_config.h"
#include "posenc/nn.h"
#include "posenc/ops.h"
#include "posenc/rope_scaling.h"
#include "posenc/version.h"
