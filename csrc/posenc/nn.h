// Umbrella header for the C++ modules posenc::nn::* (torch::nn modules that hold parameters
// and call posenc::ops; Python twins in posenc.nn, bindings in posenc.cpp).
#pragma once

#include "posenc/nn/alibi.h"
#include "posenc/nn/cope.h"
#include "posenc/nn/forgetting_gate.h"
#include "posenc/nn/kerple.h"
#include "posenc/nn/learned.h"
#include "posenc/nn/nope.h"
#include "posenc/nn/rotary.h"
#include "posenc/nn/sinusoidal.h"
#include "posenc/nn/t5.h"
#include "posenc/nn/transformer_xl.h"
