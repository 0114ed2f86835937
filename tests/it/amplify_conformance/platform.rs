//! Amplify Platform user lookup (§1.1 platform prefix): filled in once the README documents seeding.
