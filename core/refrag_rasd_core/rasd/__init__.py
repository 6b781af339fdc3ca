"""RASD: retrieval-augmented speculative decoding (datastores, token trees, draft trees, verification)."""

from .budget import TreeBudget, measure_verify_costs
from .datastore import DatastoreSet, PromptLookup, RestDatastore, Retrieval, retrieval_tree
from .draft_tree import CausalLMDrafter, Drafter, build_draft_tree, draft_probe
from .proposers import METHODS, PROPOSERS, ProposerEntry, make_proposer
from .spec_options import SpecOptions
from .step import StepResult, speculative_step
from .token_tree import SOURCE_DATASTORE, SOURCE_DRAFT, SOURCE_PROMPT, SOURCE_RETRIEVAL, TokenTree
from .verify import accept_greedy, accept_sampled

__all__ = [
    "METHODS",
    "PROPOSERS",
    "ProposerEntry",
    "SOURCE_DATASTORE",
    "SOURCE_DRAFT",
    "SOURCE_PROMPT",
    "SOURCE_RETRIEVAL",
    "CausalLMDrafter",
    "DatastoreSet",
    "Drafter",
    "PromptLookup",
    "RestDatastore",
    "Retrieval",
    "SpecOptions",
    "StepResult",
    "TokenTree",
    "TreeBudget",
    "accept_greedy",
    "accept_sampled",
    "build_draft_tree",
    "draft_probe",
    "make_proposer",
    "measure_verify_costs",
    "retrieval_tree",
    "speculative_step",
]
