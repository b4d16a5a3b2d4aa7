// Runs a TorchScript model that uses posenc ops, from C++.
//
//   posenc_example MODEL.pt INPUTS.pt OUTPUTS.pt
//
// MODEL.pt   torch.jit.script(model).save(...) of a model built from posenc.nn / posenc.ops.
// INPUTS.pt  a scripted container module whose attribute `inputs` is a tuple of the forward
//            arguments (tensors, ints, ...), e.g. from Python:
//              class Inputs(torch.nn.Module):
//                  def __init__(self, inputs): super().__init__(); self.inputs = inputs
//              torch.jit.script(Inputs((x, 3))).save("inputs.pt")
// OUTPUTS.pt the forward result (a tensor or a tuple/list of them) written with
//            torch::jit::pickle_save; read it in Python with torch.load("outputs.pt").
#include <torch/script.h>

#include <fstream>
#include <iostream>
#include <vector>

#include "posenc/posenc.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt INPUTS.pt OUTPUTS.pt\n";
    return 2;
  }
  try {
    // Referencing a posenc symbol keeps libposenc (and so the ops' registrations) linked in
    // even where the linker drops unreferenced libraries.
    std::cout << "posenc " << posenc::version() << "\n";

    torch::jit::Module model = torch::jit::load(argv[1]);
    model.eval();

    torch::jit::Module container = torch::jit::load(argv[2]);
    if (!container.hasattr("inputs")) {
      std::cerr << "error: " << argv[2] << " has no attribute 'inputs'\n";
      return 1;
    }
    c10::IValue inputs = container.attr("inputs");
    std::vector<c10::IValue> args;
    if (inputs.isTuple()) {
      const auto& elems = inputs.toTupleRef().elements();
      args.assign(elems.begin(), elems.end());
    } else {
      args.push_back(inputs);
    }

    c10::IValue out;
    {
      c10::InferenceMode guard;
      out = model.forward(args);
    }

    const std::vector<char> bytes = torch::jit::pickle_save(out);
    std::ofstream file(argv[3], std::ios::binary);
    file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!file) {
      std::cerr << "error: could not write " << argv[3] << "\n";
      return 1;
    }
    std::cout << "wrote " << argv[3] << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
