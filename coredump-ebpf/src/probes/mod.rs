pub mod signal_deliver;
