// Umbrella header: ops, C++ modules and version.
#pragma once

#include "posenc/nn.h"
#include "posenc/ops.h"
#include "posenc/rope_scaling.h"
#include "posenc/version.h"
