//! ReduNet (4.1.13): layers built forward from training features and labels, no back-propagation.
