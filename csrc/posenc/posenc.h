// Umbrella header: ops, C++ modules, context-parallel helpers and version.
#pragma once

#include "posenc/context_parallel.h"
#include "posenc/nn.h"
#include "posenc/ops.h"
#include "posenc/rope_scaling.h"
#include "posenc/version.h"
