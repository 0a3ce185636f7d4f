/* -*- c++ -*- ----------------------------------------------------------
   engine_plugins: LAMMPS fix for learned large-timestep propagation.

   fix ID group ep/propagate MODEL.pt types NAME1 ... NAMEntypes temp T seed S
       [corrector MODEL2.pt] [steps K] [solver euler|heun] [max_attempts N]
       [max_disp D] [timestep check|set] [device cpu|cuda|auto] [threads N]
       [prior_scale NAME S ...] [contact_rounds N]

   Each timestep is one learned jump of delta_tau (the model's, which must
   equal the LAMMPS timestep): the fix integrates the flow ODE of a
   'propagator' artifact (and then of a 'corrector' artifact) from
   Maxwell-Boltzmann prior noise drawn per atom tag, exchanging the ghost
   atoms' flow state between function evaluations, so 1 and N MPI ranks give
   the same trajectory. Contract: engine_plugins/methods/propagator/__init__.py.
------------------------------------------------------------------------- */

#ifdef FIX_CLASS
// clang-format off
FixStyle(ep/propagate,FixEPPropagate);
// clang-format on
#else

#ifndef LMP_FIX_EP_PROPAGATE_H
#define LMP_FIX_EP_PROPAGATE_H

#include "fix.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace LAMMPS_NS {

class FixEPPropagate : public Fix {
 public:
  FixEPPropagate(class LAMMPS *, int, char **);
  ~FixEPPropagate() override;

  int setmask() override;
  void init() override;
  void init_list(int, class NeighList *) override;
  void initial_integrate(int) override;

  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;

  double compute_scalar() override;
  double compute_vector(int) override;
  double memory_usage() override;

  struct Model;    // one artifact with its metadata and libtorch module (kept out of this header)

 protected:
  std::unique_ptr<Model> propagator, corrector;
  class NeighList *list;

  double temperature;        // K
  uint64_t seed;
  int steps_override;        // flow steps from the input (0: from the metadata)
  std::string solver_override;
  // 'prior_scale NAME S': the propagator's prior scale of model type NAME (the adaptive
  // prior's pick for this material), in input order
  std::vector<std::pair<std::string, double>> prior_scale_override;
  int max_attempts;
  int contact_rounds_input;  // 'contact_rounds N' (-1: the metadata's role_fields.contact.rounds)
  int passes_input;          // 'corrector_passes N' (-1: the corrector's role_fields.passes)
  double max_disp;           // LAMMPS length units, <= 0: from the metadata
  bool set_timestep;         // 'timestep set': dt := delta_tau instead of an error
  std::string device_request;
  int device_index;    // CUDA device of this rank, -1: CPU
  int num_threads;
  std::vector<std::string> type_args;    // model type name of each LAMMPS type (1..ntypes)

  // flow state, per atom (local + ghost), model length units; comm_array is what
  // pack/unpack_forward_comm exchange
  double **disp, **disp_trial;
  double **attempt_arr;    // [i][0]: draw counter of atom i in this jump, [i][1]: in a contact
  double **comm_array;
  int nmax_disp;

  // graph of the current jump (see build_graph)
  std::vector<int> hop, node_of, atom_of, frontier, next_frontier;
  std::vector<int64_t> edge_src, edge_dst;
  std::vector<double> shift_buf;    // edge shifts (model length units), 3 per edge

  // ghost atoms that are periodic images of an owned atom of this rank: index of that atom,
  // else -1; recomputed after each neighbor list build (ghost_owner_build = neighbor->ncalls)
  std::vector<int> ghost_owner;
  bigint ghost_owner_build;

  // diagnostics (compute_vector)
  double total_redraws, last_redraws, last_max_disp, num_jumps, total_corrector_redraws;
  double total_contact_rounds, contact_atoms, contact_left;

  std::unique_ptr<Model> load_model(const std::string &path, const std::string &role);
  void find_ghost_owners();
  void build_graph(const Model &);
  int flow(Model &, uint64_t attempt_offset, double &max_norm);
  void apply_displacement(double dt, bool set_velocity);
  void check_migration(double max_norm_lammps);
  void reneighbor();
  void grow_disp();
};

}    // namespace LAMMPS_NS

#endif
#endif
