// Umbrella header: ops, C++ modules, RoPE scaling and its config.json reader,
// context-parallel helpers and version.
#pragma once

#include "posenc/context_parallel.h"
#include "posenc/hf_config.h"
#include "posenc/nn.h"
#include "posenc/nn/dynamic_position_bias.h"
#include "posenc/nn/fire.h"
#include "posenc/ops.h"
#include "posenc/ops_mlp_bias.h"
#include "posenc/rope_scaling.h"
#include "posenc/version.h"
