# A draft. roost has no release tarball yet, so `url` and `sha256` are placeholders; once
# it does, `brew update-python-resources roost` writes the `resource` blocks for every
# dependency (pinned as in packaging/constraints.txt), and this can go into a tap.
#
# Homebrew builds Python packages from source inside the formula's virtualenv, which is
# what llama-cpp-python needs anyway: CMAKE_ARGS below picks its build the way
# app/machine/engine_build.py does (Metal on Apple Silicon, the CPU elsewhere; Homebrew has no
# CUDA toolkit, so an NVIDIA box on Linuxbrew gets the CPU build and `roost doctor` says so).
#
# Left out on purpose: MLX. Its wheels are binary-only in practice (a source build needs
# Xcode's Metal toolchain), which Homebrew's from-source resources do not allow; `roost
# doctor` says MLX is missing, and `$(brew --prefix roost)/libexec/bin/pip install mlx-lm`
# adds it. `roost doctor` names the Metal build "Metal build" whether llama.cpp calls its
# backend "MTL" (since 2026-01) or "Metal" (before): the test below relies on it.
class Roost < Formula
  include Language::Python::Virtualenv

  desc "Run open LLMs on your own machine: terminal chat, one-shot prompts, local server"
  homepage "https://github.com/OWNER/roost"
  url "https://files.pythonhosted.org/packages/source/r/roost/roost-0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "Apache-2.0"

  depends_on "cmake" => :build
  depends_on "ninja" => :build
  depends_on "numpy"
  depends_on "python@3.12"
  depends_on "rust" => :build # hf-xet, huggingface-hub's downloader, is written in Rust

  # resource "llama-cpp-python" do
  #   url "https://files.pythonhosted.org/packages/.../llama_cpp_python-0.3.36.tar.gz"
  #   sha256 "..."
  # end
  # ...one block per dependency, from `brew update-python-resources roost`

  def install
    ENV["CMAKE_ARGS"] = if OS.mac? && Hardware::CPU.arm?
      "-DGGML_METAL=on"
    else
      "-DGGML_METAL=off"
    end
    virtualenv_install_with_resources
  end

  def caveats
    <<~EOS
      The small demo model is not included. Try a model from the catalog:
        roost search
        roost run smollm2-135m "Hello"
      `roost doctor` checks that llama.cpp was built for this machine's GPU.
    EOS
  end

  test do
    assert_match "llama.cpp: yes", shell_output("#{bin}/roost doctor")
    expected = (OS.mac? && Hardware::CPU.arm?) ? "Metal build" : "CPU-only build"
    assert_match expected, shell_output("#{bin}/roost doctor")
    assert_match "no such model file", shell_output("#{bin}/roost run #{testpath}/missing.gguf hi 2>&1", 1)
  end
end
