/* -*- c++ -*- ----------------------------------------------------------
   engine_plugins: LAMMPS pair style for exported pseudo-force models.

   pair_style ep/torch MODEL.pt [device cpu|cuda|auto] [threads N]
   pair_coeff * * NAME1 NAME2 ...      (one model type name per LAMMPS type)

   MODEL.pt is an artifact written by engine_plugins.export.export_artifact with
   role 'pseudo_force' (TorchScript + JSON metadata). Ghost atoms are explicit
   graph nodes, edge shifts are zero, forces on ghosts are summed onto their
   owners by LAMMPS (newton pair on), the virial comes from f dot r.
------------------------------------------------------------------------- */

#ifdef PAIR_CLASS
// clang-format off
PairStyle(ep/torch,PairEPTorch);
// clang-format on
#else

#ifndef LMP_PAIR_EP_TORCH_H
#define LMP_PAIR_EP_TORCH_H

#include "pair.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairEPTorch : public Pair {
 public:
  PairEPTorch(class LAMMPS *);
  ~PairEPTorch() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void *extract(const char *, int &) override;

 protected:
  struct TorchState;    // libtorch objects; kept out of this header
  std::unique_ptr<TorchState> torch_state;

  // from the artifact metadata
  std::string model_path;
  std::string model_method;
  std::string model_dtype;          // "float32" or "float64"
  std::string model_periodicity;    // "periodic", "nonperiodic" or "any"
  std::string model_length_unit, model_energy_unit;
  std::vector<std::string> type_names;
  double model_cutoff;    // in model length units
  int num_layers;         // message-passing layers (>= 1 used for the halo)

  // engine side
  double cutoff;           // in LAMMPS length units
  double length_factor;    // LAMMPS length -> model length
  double energy_factor;    // model energy -> LAMMPS energy
  double force_factor;     // model force -> LAMMPS force
  std::string device_request;
  int num_threads;
  std::vector<int> type_map;    // LAMMPS type (1..ntypes) -> model type index

  // ghost atoms that are periodic images of an owned atom of this rank: index of that atom,
  // else -1; recomputed after each neighbor list build (ghost_owner_build = neighbor->ncalls)
  std::vector<int> ghost_owner;
  bigint ghost_owner_build;

  // per-step work arrays, reused between steps (no per-step heap churn)
  std::vector<int> hop;        // graph distance (in cutoff hops) of each atom from an owned atom
  std::vector<int> node_of;    // atom index -> graph node, -1 if the atom is not needed
  std::vector<int> atom_of;    // graph node -> atom index
  std::vector<int> frontier, next_frontier;
  std::vector<int64_t> edge_src, edge_dst;
  std::vector<double> shift_buf;    // edge shifts (model length units), 3 per edge
  std::vector<double> pos_buf;
  std::vector<int64_t> type_buf, edge_buf;

  // diagnostics of the last evaluation, readable with extract() / lammps.extract_pair()
  double last_nodes, last_edges, last_folded, num_folded_evals, num_explicit_evals;

  void allocate();
  void load_model(const std::string &path);
  void set_unit_factors();
  void find_ghost_owners();
  void build_graph(bool fold);
};

}    // namespace LAMMPS_NS

#endif
#endif
