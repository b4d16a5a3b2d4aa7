// Runs an AOTInductor package (.pt2) of a model that calls posenc ops, from C++, without
// TorchScript.
//
//   posenc_aoti_example MODEL.pt2 INPUTS.pt OUTPUTS.pt
//
// MODEL.pt2   torch._inductor.aoti_compile_and_package(torch.export.export(model, args)).
// INPUTS.pt   torch.save(list_of_tensors) from Python: the forward's tensor arguments, in order
//             (an AOTInductor model takes tensors only; ints given at export are constants of
//             the package, or sizes of the input tensors when exported with a Dim).
// OUTPUTS.pt  the outputs as a tuple of tensors, written with torch::jit::pickle_save; read it in
//             Python with torch.load("outputs.pt").
//
// Inductor compiles the aten ops of the model into the package's own kernels; the posenc ops
// stay calls by name (torch.ops.posenc.*) that the package's proxy executor sends through the
// dispatcher, so libposenc must be loaded and its ops registered in this process: linking
// posenc::posenc (which adds --no-as-needed) and calling posenc::version() ensure that.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include "posenc/posenc.h"

namespace {

std::vector<char> read_file(const char* path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw std::runtime_error(std::string("could not read ") + path);
  }
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// A tensor, or a list/tuple of tensors, as torch.save writes them.
std::vector<at::Tensor> to_tensors(const c10::IValue& v, const char* path) {
  std::vector<at::Tensor> out;
  if (v.isTensor()) {
    out.push_back(v.toTensor());
  } else if (v.isTensorList()) {
    for (const at::Tensor& t : v.toTensorVector()) out.push_back(t);
  } else if (v.isList() || v.isTuple()) {
    const auto elems = v.isList() ? v.toListRef().vec() : v.toTupleRef().elements().vec();
    for (const auto& e : elems) {
      if (!e.isTensor()) {
        throw std::runtime_error(std::string(path) + ": every input must be a tensor, but got " +
                                 e.tagKind());
      }
      out.push_back(e.toTensor());
    }
  } else {
    throw std::runtime_error(std::string(path) +
                             ": expected a tensor or a list/tuple of tensors, but got " +
                             v.tagKind());
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 INPUTS.pt OUTPUTS.pt\n";
    return 2;
  }
  try {
    // Referencing a posenc symbol keeps libposenc (and so the ops' registrations) loaded.
    std::cout << "posenc " << posenc::version() << "\n";

    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    const std::vector<at::Tensor> inputs = to_tensors(torch::jit::pickle_load(read_file(argv[2])), argv[2]);

    std::vector<at::Tensor> outputs;
    {
      c10::InferenceMode guard;
      outputs = loader.run(inputs);
    }

    // A tuple (not a c10::List, which pickles as a TorchScript global): torch.load reads it
    // with its default weights_only=True.
    std::vector<c10::IValue> elems(outputs.begin(), outputs.end());
    const std::vector<char> bytes = torch::jit::pickle_save(c10::ivalue::Tuple::create(std::move(elems)));
    std::ofstream file(argv[3], std::ios::binary);
    file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!file) {
      std::cerr << "error: could not write " << argv[3] << "\n";
      return 1;
    }
    std::cout << "wrote " << argv[3] << " (" << outputs.size() << " outputs)\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
