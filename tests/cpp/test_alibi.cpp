#include <gtest/gtest.h>
#include <torch/torch.h>

#include "posenc/ops.h"

TEST(Alibi, Placeholder) { EXPECT_EQ(posenc::ops::alibi_slopes(8).size(0), 8); }
